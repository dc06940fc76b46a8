"""The token bound holds against real BPE tokenizers; the window and period arithmetic is right."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from respublica.serving.gateway.contracts import Limits, Principal
from respublica.serving.gateway.quota.arithmetic import (
    day_name,
    first_failure,
    month_name,
    next_day,
    next_month,
    plan_admission,
    window_retry_after,
)
from respublica.serving.gateway.quota.estimate import (
    EstimateError,
    chat_prompt_bound,
    endpoint_of,
    requested_max_tokens,
    reservation_tokens,
)

TEXTS = [
    "Hello, world!",
    "   leading and trailing spaces   ",
    "Grüße aus Köln — ça va? ½ ∑ ∞",
    "日本語のテキストと中文文本",
    "emoji 🤖🚀👩‍👩‍👧‍👦 and combining e\u0301",
    "code:\n\tdef f(x):\n\t\treturn x ** 2  # comment\n",
    "a" * 500,
    "",
]
CORPUS = ["the quick brown fox jumps over the lazy dog", "Grüße", "日本語", "def return", "aaaa"] * 50


@pytest.fixture(scope="module")
def tokenizers() -> list[object]:
    """A byte-level BPE (GPT-2 / Llama 3 style) and a SentencePiece-style BPE, trained here."""
    tk = pytest.importorskip("tokenizers")
    byte_level = tk.ByteLevelBPETokenizer()
    byte_level.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, show_progress=False)
    sentencepiece = tk.SentencePieceBPETokenizer()
    sentencepiece.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, show_progress=False)
    return [byte_level, sentencepiece]


def count(tokenizer: object, text: str) -> int:
    return len(tokenizer.encode(text).ids)  # type: ignore[attr-defined]


def test_text_bound_holds_for_bpe_tokenizers(tokenizers: list[object]) -> None:
    for tokenizer in tokenizers:
        for text in TEXTS:
            body = {"model": "m", "prompt": text}
            bound = reservation_tokens(body, "completions", 0)
            assert count(tokenizer, text) <= bound, (tokenizer, text)


def test_chat_bound_covers_a_rendered_template(tokenizers: list[object]) -> None:
    messages = [{"role": "system", "content": TEXTS[2]}] + [
        {"role": "user" if i % 2 else "assistant", "content": t} for i, t in enumerate(TEXTS)
    ]
    messages.append(
        {"role": "user", "content": [{"type": "text", "text": TEXTS[3]}, {"type": "text", "text": TEXTS[4]}]}
    )
    # A Llama-3-like template: special markers around every message.
    rendered = (
        "<|begin_of_text|>"
        + "".join(
            f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"
            + (m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"]))
            + "<|eot_id|>"
            for m in messages
        )
        + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    bound = chat_prompt_bound({"messages": messages})
    for tokenizer in tokenizers:
        assert count(tokenizer, rendered) <= bound


def test_reservation_adds_the_output_cap_times_sequences() -> None:
    chat = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 100,
        "max_tokens": 7,
        "n": 3,
    }
    assert reservation_tokens(chat, "chat", 1024) == chat_prompt_bound(chat) + 300
    no_cap = {"messages": [{"role": "user", "content": "hi"}]}
    assert reservation_tokens(no_cap, "chat", 50) == chat_prompt_bound(no_cap) + 50
    assert requested_max_tokens(no_cap, "chat") is None
    ids = {"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 10, "n": 2, "best_of": 4}
    assert reservation_tokens(ids, "completions", 99) == (3 + 64) + (2 + 64) + 10 * 4 * 2
    # Each input also gets its special tokens: BERT turns 'a' into [CLS] a [SEP], 3 tokens.
    assert reservation_tokens({"input": "a"}, "embeddings", 1024) >= 3
    assert reservation_tokens({"input": ["ab", "c"]}, "embeddings", 1024) == (3 + 8) + (2 + 8)
    assert reservation_tokens({"input": [1, 2, 3]}, "embeddings", 1024) == 3 + 8


def test_media_and_tools_count() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}
    with_image = {"messages": [{"role": "user", "content": [image]}]}
    assert chat_prompt_bound(with_image) >= 4096
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    ]
    plain = {"messages": [{"role": "user", "content": "x"}]}
    assert chat_prompt_bound({**plain, "tools": tools}) > chat_prompt_bound(plain) + 60


@pytest.mark.parametrize(
    ("body", "endpoint", "param"),
    [
        ({"messages": []}, "chat", "messages"),
        ({"messages": ["hi"]}, "chat", "messages[0]"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "chat", "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "n": True}, "chat", "n"),
        ({"prompt": {"a": 1}}, "completions", "prompt"),
        ({"input": []}, "embeddings", "input"),
    ],
)
def test_bad_bodies_name_the_field(body: dict[str, object], endpoint: str, param: str) -> None:
    with pytest.raises(EstimateError) as info:
        reservation_tokens(body, endpoint, 16)  # type: ignore[arg-type]
    assert info.value.param == param


def test_endpoints() -> None:
    assert [endpoint_of(p) for p in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")] == [
        "chat",
        "completions",
        "embeddings",
    ]


def test_window_retry_after() -> None:
    assert window_retry_after(0, 0, 10, 1, 5) == 0.0
    assert window_retry_after(0, 5, 10, 1, 5) == pytest.approx(50 + 12)  # next minute, 5*(1-t/60)+1<=5
    assert window_retry_after(6, 0, 10, 1, 5) == pytest.approx(10)  # 6*(1-t/60)+1<=5 from t=20 s
    assert window_retry_after(6, 0, 30, 1, 5) == 0.0  # already decayed enough
    assert window_retry_after(0, 0, 0, 6, 5) is None  # more than the limit: never


def test_periods_roll_over_in_utc() -> None:
    dec = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    assert next_day(dec) == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert next_month(dec) == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    feb = datetime(2028, 2, 29, 12, tzinfo=UTC).timestamp()
    assert next_month(feb) == datetime(2028, 3, 1, tzinfo=UTC).timestamp()


def test_plan_checks_tenant_then_key() -> None:
    who = Principal("acme", "k1", Limits(tokens_per_day=100), Limits(tokens_per_day=10))
    plan = plan_admission(who, 20, 1_795_000_030.0)
    zeros = [(0, 0)] * len(plan.checks)
    failed = first_failure(plan, zeros)
    assert failed is not None and plan.checks[failed].scope == "key"
    assert {c.key.split(":")[0] for c in plan.checks} == {"t", "s"}
    assert plan.keys.slots == ("t:cc", "s:k1:cc")


def test_plan_checks_budgets_always_and_windows_only_where_limited() -> None:
    unlimited = plan_admission(Principal("acme", "k1", Limits()), 20, 1_795_000_030.0)
    assert [(c.scope, c.reason) for c in unlimited.checks] == [
        ("tenant", "tokens_per_day"),
        ("tenant", "tokens_per_month"),
        ("key", "tokens_per_day"),
        ("key", "tokens_per_month"),
    ]
    assert all(c.limit is None for c in unlimited.checks)
    assert unlimited.keys.slots == ("t:cc", "s:k1:cc")  # live leases are counted either way
    # Settled on exactly the token counters it charged: no minute window without a limit.
    day, month = day_name(1_795_000_030.0), month_name(1_795_000_030.0)
    assert unlimited.keys.tokens == (f"t:d:{day}", f"t:m:{month}", f"s:k1:d:{day}", f"s:k1:m:{month}")
    every = Limits(
        requests_per_minute=1, tokens_per_minute=2, tokens_per_day=3, tokens_per_month=4, max_concurrent=5
    )
    full = plan_admission(Principal("acme", "k1", every, Limits(requests_per_minute=9)), 20, 1_795_000_030.0)
    reasons = ["requests_per_minute", "tokens_per_minute", "tokens_per_day", "tokens_per_month"]
    reasons.append("concurrency")
    assert [(c.scope, c.reason) for c in full.checks] == [
        *(("tenant", r) for r in reasons),
        ("key", "requests_per_minute"),
        ("key", "tokens_per_day"),
        ("key", "tokens_per_month"),
    ]
    assert [c.limit for c in full.checks[:5]] == [1, 2, 3, 4, 5]
    minute = int(1_795_000_030.0 // 60)
    assert full.keys.tokens == (
        f"t:tk:{minute}",
        f"t:d:{day}",
        f"t:m:{month}",
        f"s:k1:d:{day}",
        f"s:k1:m:{month}",
    )


def test_bucket_names_match_the_calendar_at_every_day_edge() -> None:
    """The cached day and month names are what strftime says, on both sides of each midnight."""
    from datetime import UTC, datetime

    from respublica.serving.gateway.quota.arithmetic import day_name, month_name

    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    for day in range(0, 800, 7):
        for ts in (start + day * 86_400 - 0.001, start + day * 86_400, start + day * 86_400 + 43_200.5):
            moment = datetime.fromtimestamp(ts, UTC)
            assert day_name(ts) == moment.strftime("%Y%m%d"), ts
            assert month_name(ts) == moment.strftime("%Y%m"), ts


PLAIN = {"messages": [{"role": "user", "content": "hi"}]}


def test_documents_and_template_kwargs_are_in_the_bound() -> None:
    """vLLM renders `documents` and `chat_template_kwargs` into the prompt: their bytes count."""
    doc = {"title": "t", "text": "y" * 3000}
    with_docs = chat_prompt_bound({**PLAIN, "documents": [doc, doc]})
    assert with_docs >= chat_prompt_bound(PLAIN) + 2 * 3000
    kwargs = {"system_prompt": "z" * 2000, "enable_thinking": True}
    assert chat_prompt_bound({**PLAIN, "chat_template_kwargs": kwargs}) >= chat_prompt_bound(PLAIN) + 2000


@pytest.mark.parametrize(
    "extra",
    [
        {"chat_template": "{% for i in range(100000) %}x{% endfor %}"},
        {"chat_template_kwargs": {"chat_template": "{{ messages }}"}},
    ],
)
def test_a_request_chat_template_is_refused(extra: dict[str, object]) -> None:
    """A few bytes of Jinja render any length, so no bound holds: 400, as vLLM does by default."""
    with pytest.raises(EstimateError) as e:
        chat_prompt_bound({**PLAIN, **extra})
    assert e.value.param == "chat_template"


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"documents": "text"}, "documents"), ({"chat_template_kwargs": ["x"]}, "chat_template_kwargs")],
)
def test_bad_template_fields_name_the_field(extra: dict[str, object], param: str) -> None:
    with pytest.raises(EstimateError) as e:
        chat_prompt_bound({**PLAIN, **extra})
    assert e.value.param == param


def test_each_image_gets_the_largest_vision_allowance() -> None:
    """Qwen2-VL's default max_pixels (12,845,056) at 28x28 px a token: 16,384 tokens an image,
    even for a short URL; three images reserve three allowances."""
    qwen2_vl_max_tokens = 12_845_056 // (28 * 28)
    image = {"type": "image_url", "image_url": {"url": "https://x/huge.png"}}
    one = chat_prompt_bound({"messages": [{"role": "user", "content": [image]}]})
    three = chat_prompt_bound({"messages": [{"role": "user", "content": [image] * 3}]})
    assert one >= qwen2_vl_max_tokens
    assert three >= 3 * qwen2_vl_max_tokens


def test_a_data_url_counts_its_bytes() -> None:
    data = "data:image/png;base64," + "A" * 100_000
    image = {"type": "image_url", "image_url": {"url": data}}
    assert chat_prompt_bound({"messages": [{"role": "user", "content": [image]}]}) >= 100_000
