"""A deliberately unreliable environment for the RLVR stage test (loaded with grpo.env_modules):
its first call hangs past the score timeout, every third call raises, and the others reward the
response's length parity, so its groups carry signal and the policy really trains."""
import time

from grpo.envs import Environment, Score, register


@register
class Flaky(Environment):
    name = "flaky"
    calls = 0

    def score(self, task, response):
        Flaky.calls += 1
        if Flaky.calls == 1:
            time.sleep(5)
        if Flaky.calls % 3 == 2:
            raise ValueError("flaky verifier")
        return Score(float(len(response) % 2), "parity")
