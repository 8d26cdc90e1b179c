"""A deliberately broken environment for the RLVR stage test (loaded with grpo.env_modules): its
first call hangs past the score timeout, every later call raises."""
import time

from grpo.envs import Environment, register


@register
class Flaky(Environment):
    name = "flaky"
    hung = False

    def score(self, task, response):
        if not Flaky.hung:
            Flaky.hung = True
            time.sleep(5)
        raise ValueError("flaky verifier")
