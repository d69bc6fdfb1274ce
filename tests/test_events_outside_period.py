"""With `outside_period`, a strong concept's values outside the question's period follow the in-period ones,
before text retrieval's events: a period read too narrowly still leaves the asked concept within reach. (An
option, off by default: see events.OUTSIDE_PERIOD.)"""

from medalign_rag.retrieval.events import EventsRetriever
from medalign_rag.retrieval.vocabulary import build_vocabulary
from tests.test_events import built  # noqa: F401  (two stays, potassium every 12 hours in each)


def _ids(index, order):
    return [index.chunks[p].events[i].event_id for p, i in order]


def test_values_outside_the_period_come_after_those_inside_and_before_other_events(built):  # noqa: F811
    index, embedder = built
    question = "potassium values on the last hospital stay"
    potassium = {ev.event_id for c in index.chunks for ev in c.events if ev.event_id.startswith("k")}
    in_stay = {e for e in potassium if e.startswith("k1-")}
    before_stay = potassium - in_stay
    assert len(in_stay) == len(before_stay) == 6

    ids = _ids(index, EventsRetriever(index, embedder, vocabulary=build_vocabulary(),
                                      outside_period=True).rank_events(question))
    assert set(ids[:6]) == in_stay  # the asked period's values lead
    assert set(ids[6:12]) == before_stay  # then the concept's other values, newest first, before anything else
    assert ids[6] == "k0-60"

    without = _ids(index, EventsRetriever(index, embedder, vocabulary=build_vocabulary(),
                                          outside_period=False).rank_events(question))
    assert set(without[:6]) == in_stay
    assert not set(without[6:12]) & before_stay  # reached only through text retrieval, later
    assert set(without) == set(ids)  # the same events either way, only their order differs
