"""functools.lru_cache on a method: every call caches (self, args) -> result, forever."""
import functools

from _worker import run


class Enricher:
    def __init__(self, tenant):
        self.tenant = tenant

    @functools.lru_cache(maxsize=None)
    def profile(self, user_id):
        return [user_id] * 2000  # leak-site

    def enrich(self, user_id):
        return len(self.profile(user_id))


def enrich(i, rnd):
    Enricher(rnd.randint(0, 3)).enrich(i)


def score(i, rnd):
    return sum(range(200))


def notify(i, rnd):
    return {"to": i}


run({"score": score, "enrich": enrich, "notify": notify})
