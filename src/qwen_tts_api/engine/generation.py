"""Our incremental generation loop: yields one codec frame (16 codes) as soon as it exists.

Per frame the talker runs once and the code predictor fills codebooks 2..16. The package
does the latter through a full Hugging Face ``generate`` call per frame; here it is a
direct loop over the predictor's layers with a small KV cache, which removes most of the
per-frame Python overhead and lets the caller stop between any two frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from transformers.cache_utils import DynamicCache

from .prompt import TalkerPrompt
from .sampling import SamplingParams, TalkerLogits


class FrameGenerator:
    def __init__(
        self,
        tts,
        prompt: TalkerPrompt,
        params: SamplingParams,
        max_frames: int,
        should_stop: Callable[[], bool] | None = None,
    ):
        self.model = tts.model
        self.talker = tts.model.talker
        self.predictor = self.talker.code_predictor
        self.prompt = prompt
        self.params = params
        self.max_frames = max_frames
        self.should_stop = should_stop or (lambda: False)
        tcfg = self.model.config.talker_config
        self.eos_id = tcfg.codec_eos_token_id
        self.rules = TalkerLogits(tcfg.vocab_size, self.eos_id, self.talker.device)
        self.frames_made = 0
        self.ended_by_model = False

    @torch.inference_mode()
    def __iter__(self) -> Iterator[torch.Tensor]:
        cache = DynamicCache()
        out = self.talker.model(inputs_embeds=self.prompt.prefill, past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1:]
        history = torch.zeros((1, 0), dtype=torch.long, device=self.talker.device)
        token = self._first_codebook(hidden, history, frame=0)
        trailing = self.prompt.trailing_text
        for frame in range(self.max_frames):
            if int(token) == self.eos_id:
                self.ended_by_model = True
                return
            if self.should_stop():
                return
            history = torch.cat([history, token.view(1, 1)], dim=1)
            codes, embeds = fill_codebooks(self.talker, self.params, hidden, token.view(1))
            self.frames_made += 1
            yield codes[0]
            if frame + 1 == self.max_frames:
                return
            step_input = embeds.sum(1, keepdim=True)
            step_input = step_input + (trailing[:, frame:frame + 1] if frame < trailing.shape[1] else self.prompt.tts_pad)
            out = self.talker.model(inputs_embeds=step_input, past_key_values=cache, use_cache=True)
            hidden = out.last_hidden_state[:, -1:]
            token = self._first_codebook(hidden, history, frame=frame + 1)

    def _first_codebook(self, hidden: torch.Tensor, history: torch.Tensor, frame: int) -> torch.Tensor:
        logits = self.talker.codec_head(hidden)[:, -1]
        scores = self.rules.apply(logits, history, frame, self.params.repetition_penalty)
        return self.params.talker.choose(scores)[0]


def fill_codebooks(talker, params: SamplingParams, hidden: torch.Tensor, first: torch.Tensor):
    """Codebooks 2..16 for one frame of each row: ``hidden`` (B, 1, D) is the talker's last
    hidden state, ``first`` (B,) the first-codebook tokens. Returns codes (B, 16) and their
    input embeddings (B, 16, D). Rows run in lock-step, so no padding is needed."""
    predictor = talker.code_predictor
    first_embed = talker.get_input_embeddings()(first.view(-1, 1))
    embeds = [first_embed]
    codes = [first.view(-1)]
    cache = DynamicCache()
    step_input = torch.cat([hidden, first_embed], dim=1)
    for group in range(talker.config.num_code_groups - 1):
        out = predictor.model(inputs_embeds=predictor.small_to_mtp_projection(step_input),
                              past_key_values=cache, use_cache=True)
        logits = predictor.lm_head[group](out.last_hidden_state[:, -1])
        code = params.predictor.choose(logits.float())
        codes.append(code)
        step_input = predictor.model.get_input_embeddings()[group](code.view(-1, 1))
        embeds.append(step_input)
    return torch.stack(codes, dim=1), torch.cat(embeds, dim=1)
