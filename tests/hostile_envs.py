"""Verifiers that misbehave the ways a hostile answer can make a real one misbehave (loaded by the
scoring tests through `modules=["tests.hostile_envs"]`, so the scoring workers import them too)."""
import os
import subprocess
import sys
import time

from grpo.envs import Environment, Score, register


@register
class Spins(Environment):
    """Pure Python that never returns: no thread can interrupt it."""
    name = "test_spins"

    def score(self, task, response):
        while True:
            pass

    def step(self, task, state, turn):
        return self.score(task, turn)


@register
class SpinsInC(Environment):
    """One C call that never returns in practice, holding the GIL (an exponent tower evaluated)."""
    name = "test_spins_in_c"

    def score(self, task, response):
        return Score(float(9 ** 9 ** 9 > 0))


@register
class Spawns(Environment):
    """Starts a busy child process, then hangs: the child must not outlive the deadline either."""
    name = "test_spawns"

    def score(self, task, response):
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(3600)


@register
class Raises(Environment):
    name = "test_raises"

    def score(self, task, response):
        raise RuntimeError("verifier blew up")


@register
class Dies(Environment):
    name = "test_dies"

    def score(self, task, response):
        os._exit(3)


@register
class NotAScore(Environment):
    name = "test_not_a_score"

    def score(self, task, response):
        return 1.0


@register
class Echo(Environment):
    """Reward 1 for the response "yes"; reports the scoring process."""
    name = "test_echo"

    def score(self, task, response):
        return Score(float(response == "yes"), "echo", {"pid": os.getpid()})


@register
class FailsInWorker(Environment):
    """Builds in the caller's process but not in a scoring worker."""
    name = "test_fails_in_worker"

    def __init__(self):
        if "scoring-worker-" in os.environ.get("TMPDIR", ""):
            raise OSError("no verifier here")
