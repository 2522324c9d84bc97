"""Model judges: an OpenAI-compatible chat endpoint (:class:`LLMJudge`) and the policy
model itself (:class:`SelfJudge`), both asking whether two answers to a question agree.

The verdict is parsed strictly (:func:`parse_verdict`): the reply must be YES or NO,
optionally wrapped in quotes/bold and followed by punctuation and an explanation that does
not contradict it ("Yes." / "NO - they differ"); anything else is no verdict (None), which
the reward counts as disagreement and the caller can report.

:class:`LLMJudge` talks to ``{base_url}/v1/chat/completions`` with the standard library
(urllib + a thread pool): timeout per request, retries with exponential backoff on
timeouts, refused connections, HTTP 408/409/425/429 and 5xx; other HTTP errors fail at
once. Replies are cached on disk (JSON lines keyed by sha256 of model + messages), so a
question asked once is never asked again, across runs too. The API key is read from the
environment variable whose *name* is configured (``api_key_env``); when that variable is
unset (or ``api_key_env`` is None) no key is sent, which local vLLM / llama.cpp servers
accept — a 401/403 then names the unset variable. An unreachable server raises one ``CordError`` line
naming the URL.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cord import CordError

AGREEMENT_TEMPLATE = (
    "You compare two answers to the same question. Decide whether they give the same final "
    "answer. Ignore wording, reasoning steps, formatting and units; numbers that are equal "
    "in value agree; an answer that gives no final answer does not agree.\n\n"
    "{question_block}"
    "Answer 1:\n{candidate}\n\n"
    "Answer 2:\n{reference}\n\n"
    "Do Answer 1 and Answer 2 give the same final answer? Reply with exactly one word: YES or NO."
)

_RETRY_HTTP = {408, 409, 425, 429}


def build_agreement_prompt(question: str, candidate: str, reference: str, template: str = AGREEMENT_TEMPLATE) -> str:
    """The judge prompt; the question line is left out when ``question`` is empty."""
    question_block = f"Question:\n{question.strip()}\n\n" if question and question.strip() else ""
    return template.format(question_block=question_block, candidate=candidate.strip(), reference=reference.strip())


def parse_verdict(reply: str | None) -> bool | None:
    """True for YES, False for NO, None for anything else (see the module docstring)."""
    if reply is None:
        return None
    s = reply.strip().strip("*_`\"'“”‘’ \t\n").strip()
    m = re.match(r"(yes|no)(?![a-z])", s, re.IGNORECASE)
    if not m:
        return None
    verdict = m.group(1).lower() == "yes"
    rest = s[m.end() :]
    if rest and not re.match(r"\s*[.,!:;\-—–*)\]\n]|\s*$", rest):
        return None  # "Yes they" / "No way" style run-ons are not a verdict line
    other = "no" if verdict else "yes"
    if re.search(rf"\b{other}\b", rest, re.IGNORECASE):
        return None  # "Yes. ... no ..." contradicts itself
    return verdict


@dataclass(frozen=True)
class Verdict:
    """One judgement: ``agree`` is True/False, or None when the reply held no verdict."""

    agree: bool | None
    reply: str
    cached: bool = False


def chat_completions_url(base_url: str) -> str:
    """``http://host:8000`` / ``…/v1`` / ``…/v1/chat/completions`` → the completions URL."""
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise CordError(f"judge base_url {base_url!r} must start with http:// or https://")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


class LLMJudge:
    """A YES/NO agreement judge behind any OpenAI-compatible ``/v1/chat/completions``.

    ``base_url``: server root, ``…/v1`` or the full completions URL. ``model``: the model
    name the server expects. ``api_key_env``: NAME of the environment variable holding the
    key (None or unset: no key sent). ``timeout``: seconds per request. ``max_retries``: retries after the
    first attempt; the wait before retry k (k = 0, 1, …) is ``backoff · 2^k`` seconds.
    ``concurrency``: parallel requests in :meth:`agree_batch`. ``cache_path``: JSON-lines
    cache file (None: in-memory only). ``max_tokens``: reply budget (None: server default).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        concurrency: int = 8,
        cache_path: str | Path | None = None,
        max_tokens: int | None = 8,
        temperature: float = 0.0,
        template: str = AGREEMENT_TEMPLATE,
    ):
        self.url = chat_completions_url(base_url)
        if not model:
            raise CordError("judge model name is empty; set the model the server serves")
        self.model = model
        # An unset variable sends no key (local servers need none); if the server then
        # refuses with 401/403 the error names the variable.
        self.api_key_env = api_key_env
        self.api_key: str | None = os.environ.get(api_key_env) if api_key_env else None
        if timeout <= 0 or max_retries < 0 or backoff < 0 or concurrency < 1:
            raise CordError("judge needs timeout > 0, max_retries >= 0, backoff >= 0 and concurrency >= 1")
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.concurrency = int(concurrency)
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.template = template
        self.cache_path = Path(cache_path) if cache_path else None
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "retries": 0, "cache_hits": 0}
        if self.cache_path is not None:
            self._load_cache()

    @classmethod
    def from_config(cls, cfg) -> "LLMJudge":
        """Build from a judge config section (attributes ``base_url``, ``model``,
        ``api_key_env``, ``timeout``, ``max_retries``, ``concurrency`` and ``cache_dir`` —
        the cache file is ``cache_dir/llm_judge.jsonl``)."""
        base_url, model = getattr(cfg, "base_url", None), getattr(cfg, "model", None)
        if not base_url or not model:
            raise CordError("judge kind 'llm' needs judge.base_url and judge.model (an OpenAI-compatible server)")
        cache_dir = getattr(cfg, "cache_dir", None)
        kwargs = {k: getattr(cfg, k) for k in ("api_key_env", "timeout", "max_retries", "concurrency") if getattr(cfg, k, None) is not None}
        return cls(base_url, model, cache_path=Path(cache_dir) / "llm_judge.jsonl" if cache_dir else None, **kwargs)

    # --- cache ---------------------------------------------------------------------------

    def _load_cache(self) -> None:
        assert self.cache_path is not None
        if not self.cache_path.exists():
            return
        with open(self.cache_path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    self._cache[row["key"]] = row["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut by a crash is dropped, the rest is kept

    def _store(self, key: str, reply: str) -> None:
        with self._lock:
            self._cache[key] = reply
            if self.cache_path is not None:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.cache_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "model": self.model, "reply": reply}, ensure_ascii=False) + "\n")

    def _messages(self, prompt: str) -> list[dict]:
        return [{"role": "user", "content": prompt}]

    def cache_key(self, prompt: str) -> str:
        payload = json.dumps({"model": self.model, "messages": self._messages(prompt)}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    # --- HTTP ----------------------------------------------------------------------------

    def _post_once(self, prompt: str) -> str:
        body: dict = {"model": self.model, "messages": self._messages(prompt), "temperature": self.temperature}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            raw = resp.read()
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            snippet = raw[:120].decode("utf-8", "replace").replace("\n", " ")
            raise CordError(f"LLM judge at {self.url} sent a reply that is not a chat completion: {snippet!r}") from None
        return content if isinstance(content, str) else ""

    def ask(self, prompt: str) -> tuple[str, bool]:
        """The model's reply to ``prompt`` and whether it came from the cache."""
        key = self.cache_key(prompt)
        with self._lock:
            if key in self._cache:
                self.stats["cache_hits"] += 1
                return self._cache[key], True
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.stats["retries"] += 1
                time.sleep(self.backoff * 2 ** (attempt - 1))
            with self._lock:
                self.stats["requests"] += 1
            try:
                reply = self._post_once(prompt)
            except urllib.error.HTTPError as e:
                if e.code in _RETRY_HTTP or e.code >= 500:
                    last_error = f"HTTP {e.code}"
                    continue
                detail = e.read()[:160].decode("utf-8", "replace").replace("\n", " ") if e.fp else ""
                hint = ""
                if e.code in (401, 403):
                    if self.api_key_env and not self.api_key:
                        hint = f" (environment variable {self.api_key_env} with the API key is not set)"
                    else:
                        hint = f" (check the API key in {self.api_key_env or 'api_key_env'})"
                raise CordError(f"LLM judge at {self.url} answered HTTP {e.code}{hint}: {detail}") from None
            except urllib.error.URLError as e:
                reason = e.reason
                last_error = f"timed out after {self.timeout:g} s" if isinstance(reason, (TimeoutError, socket.timeout)) else str(reason)
                continue
            except (TimeoutError, socket.timeout):
                last_error = f"timed out after {self.timeout:g} s"
                continue
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                last_error = f"{type(e).__name__}: {e}"
                continue
            self._store(key, reply)
            return reply, False
        raise CordError(
            f"LLM judge endpoint {self.url} unreachable after {self.max_retries + 1} attempts "
            f"({last_error}); start the server or fix the judge base_url"
        )

    # --- judging -------------------------------------------------------------------------

    def agree(self, question: str, candidate: str, reference: str) -> Verdict:
        reply, cached = self.ask(build_agreement_prompt(question, candidate, reference, self.template))
        return Verdict(parse_verdict(reply), reply, cached)

    def agree_batch(self, questions: Sequence[str], candidates: Sequence[str], references: Sequence[str]) -> list[Verdict]:
        """Judge many pairs, ``concurrency`` requests at a time; identical prompts are asked
        once. The first failure cancels what has not started and is raised; replies already
        received stay in the cache."""
        if not (len(questions) == len(candidates) == len(references)):
            raise CordError("agree_batch needs as many questions, candidates and references")
        prompts = [build_agreement_prompt(q, c, r, self.template) for q, c, r in zip(questions, candidates, references)]
        unique = list(dict.fromkeys(prompts))
        results: dict[str, tuple[str, bool]] = {}
        if len(unique) == 1 or self.concurrency == 1:
            for p in unique:
                results[p] = self.ask(p)
        else:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(unique))) as pool:
                futures = {p: pool.submit(self.ask, p) for p in unique}
                try:
                    for p, fut in futures.items():
                        results[p] = fut.result()
                except BaseException:
                    for fut in futures.values():
                        fut.cancel()
                    raise
        out = []
        seen: set[str] = set()
        for p in prompts:
            reply, cached = results[p]
            out.append(Verdict(parse_verdict(reply), reply, cached or p in seen))
            seen.add(p)
        return out


class SelfJudge:
    """The policy model as its own judge: the same agreement prompt, answered by
    ``generate_text(prompts) -> replies`` (one reply per prompt; the model side — chat
    template, greedy decoding — is built elsewhere)."""

    def __init__(self, generate_text: Callable[[list[str]], list[str]], template: str = AGREEMENT_TEMPLATE):
        if not callable(generate_text):
            raise CordError("SelfJudge needs a callable generate_text(list[str]) -> list[str]")
        self.generate_text = generate_text
        self.template = template

    def agree(self, question: str, candidate: str, reference: str) -> Verdict:
        return self.agree_batch([question], [candidate], [reference])[0]

    def agree_batch(self, questions: Sequence[str], candidates: Sequence[str], references: Sequence[str]) -> list[Verdict]:
        if not (len(questions) == len(candidates) == len(references)):
            raise CordError("agree_batch needs as many questions, candidates and references")
        if not candidates:
            return []
        prompts = [build_agreement_prompt(q, c, r, self.template) for q, c, r in zip(questions, candidates, references)]
        replies = list(self.generate_text(prompts))
        if len(replies) != len(prompts):
            raise CordError(f"self judge: generate_text returned {len(replies)} replies for {len(prompts)} prompts")
        return [Verdict(parse_verdict(r), r if isinstance(r, str) else str(r)) for r in replies]
