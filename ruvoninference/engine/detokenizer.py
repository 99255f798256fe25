"""Token ids become text as they are generated, and stop strings cut it exactly.

Decoding the whole output again after every token costs time that grows with the output; decoding a
window of the last few tokens twice (what the engine did before) costs two tokenizer calls per token. The
`tokenizers` library keeps the decoder's state between calls (`DecodeStream`): each new id costs one small
step in Rust, and a character split over several byte-level tokens comes out once it is complete.

Stop strings are matched on the text, not on tokens: " Hoo" + "onz" can complete "Hooonz" across a token
boundary. So text that could still become the start of a stop string is **held back** until it cannot: after
"... Hoo" with the stop string "Hooonz", nothing of " Hoo"'s last "Hoo" is released; if the next token is
" Hi" it is released with it, if it is "onz" the stop string matched and neither is ever sent. What a stream
delivers is therefore always a prefix of the final text, and the final text never contains a stop string
or a piece of one.

Text is produced only where someone reads it: a request with stop strings or a stream consumer decodes
incrementally; an offline batch with neither decodes its output once, when it finishes.
"""

from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.stop = stop
        self._max_stop = max((len(s) for s in stop), default=0)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:  # a fast (Rust) tokenizer: keep its decoder state between tokens
            from tokenizers.decoders import DecodeStream

            self._stream, self._backend = DecodeStream(skip_special_tokens=True), backend
        else:  # a Python tokenizer: decode the last few tokens again for each new one
            self._stream, self._tokenizer, self._ids, self._prefix, self._read = None, tokenizer, [], 0, 0
        self.text = ""  # everything decoded so far, cut at a stop string once one matched
        self.emitted = 0  # characters of `text` already released
        self.stopped = False  # a stop string matched

    def _decode(self, token_id: int) -> str:
        if self._stream is not None:
            return self._stream.step(self._backend, token_id) or ""
        self._ids.append(token_id)
        done = self._tokenizer.decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        upto = self._tokenizer.decode(self._ids[self._prefix:], skip_special_tokens=True)
        if upto.endswith("\ufffd"):  # a character still incomplete: wait for its next byte
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return upto[len(done):]

    def add(self, token_id: int) -> str:
        """Decode one more token; return the text that can be released now (maybe "")."""
        if self.stopped:
            return ""
        new = self._decode(token_id)
        if not new:
            return ""
        self.text += new
        if self.stop:
            start = max(0, self.emitted - self._max_stop)
            cuts = [c for c in (self.text.find(s, start) for s in self.stop) if c != -1]
            if cuts:
                self.text, self.stopped = self.text[:min(cuts)], True
                return self.flush()
        release = len(self.text) - self._held_back()
        delta = self.text[self.emitted:release]
        self.emitted = max(self.emitted, release)
        return delta

    def _held_back(self) -> int:
        """Length of the longest end of the text that is the start of some stop string."""
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text) - self.emitted), longest, -1):
                if self.text.endswith(s[:k]):
                    longest = k
                    break
        return longest

    def flush(self) -> str:
        """Release whatever was held back (the request finished for another reason, or a stop matched)."""
        delta, self.emitted = self.text[self.emitted:], len(self.text)
        return delta
