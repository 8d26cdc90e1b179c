"""A deliberately unreliable environment for the RLVR stage test (loaded with grpo.env_modules):
its first call hangs past the score timeout, every third call raises, and the others reward the
response's length parity, so its groups carry signal and the policy really trains. The calls are
counted in a file (`grpo.env_options={flaky: {counter: <path>}}`), since every scoring worker
process, and the one replacing a killed worker, has its own instance."""
import fcntl
import time

from grpo.envs import Environment, Score, register


@register
class Flaky(Environment):
    name = "flaky"

    def __init__(self, counter: str = ""):
        self.counter, self.calls = counter, 0

    def _next_call(self) -> int:
        if not self.counter:
            self.calls += 1
            return self.calls
        with open(self.counter, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            n = int(f.read() or 0) + 1
            f.seek(0)
            f.truncate()
            f.write(str(n))
        return n

    def score(self, task, response):
        n = self._next_call()
        if n == 1:
            time.sleep(5)
        if n % 3 == 2:
            raise ValueError("flaky verifier")
        return Score(float(len(response) % 2), "parity")
