"""interleaved_samples: the functions are called in turn, warm-up rounds untimed, and each
sample is the time of that function's own call."""

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_structconv.timing import interleaved_samples


@settings(max_examples=20, deadline=None)
@given(
    names=st.lists(st.sampled_from("abcde"), min_size=1, max_size=5, unique=True),
    calls=st.integers(0, 6),
    warmup=st.integers(0, 3),
)
def test_calls_alternate_round_by_round(names, calls, warmup):
    order = []
    functions = {name: (lambda name=name: order.append(name)) for name in names}
    samples = interleaved_samples(functions, calls, warmup)
    assert order == names * (warmup + calls)
    assert list(samples) == names
    assert all(len(values) == calls for values in samples.values())


def test_each_sample_times_its_own_function():
    def slow():
        time.sleep(0.003)

    samples = interleaved_samples({"slow": slow, "fast": lambda: None}, calls=5, warmup=1)
    assert min(samples["slow"]) >= 3.0
    assert max(samples["fast"]) < 3.0
