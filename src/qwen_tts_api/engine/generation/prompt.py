"""Builds the talker's input for one request, exactly as ``qwen_tts`` does inside ``generate``.

The package has no public function for this step, so it is mirrored here for a single
request: CustomVoice (speaker, optional instruction) and Base (x-vector or in-context
cloning). ``tests/engine/generation/test_generation_equivalence.py`` checks that the codes we generate from
it equal the package's.

The model reads its text in one of two ways (the package's ``non_streaming_mode``): all of
it before the first frame (CustomVoice's default, used for HTTP requests whose text is
complete), or one token per generated frame after the first (Base's default, and the only
way for text that is still arriving). In the second way the text can grow while the
generation runs: ``TalkerPrompt.extend`` adds tokens and ``finish`` ends the text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...voices.prompt import ClonePrompt


@dataclass
class TalkerPrompt:
    prefill: torch.Tensor  # (1, T, hidden): everything the talker reads before the first frame
    trailing_text: torch.Tensor  # (1, L, hidden): text fed one position per generated frame
    tts_pad: torch.Tensor  # (1, 1, hidden): fed once the trailing text is used up
    ref_codes: torch.Tensor | None = None  # (R, 16) reference frames (in-context cloning)
    text_tokens: int = 0  # tokens of the text itself, for usage reports
    tts_eos: torch.Tensor | None = None  # (1, 1, hidden): ends text that was still arriving
    text_final: bool = True  # False while more text may arrive (the row waits when it has read all)

    def extend(self, embeds: torch.Tensor) -> None:
        """More text (``embeds`` (1, n, hidden)) for a prompt whose text is still arriving."""
        assert not self.text_final, "the text of this prompt has ended"
        self.trailing_text = torch.cat([self.trailing_text, embeds], dim=1)
        self.text_tokens += embeds.shape[1]

    def finish(self) -> None:
        """The text is complete: the model reads its end marker, then pads."""
        if not self.text_final:
            assert self.tts_eos is not None
            self.trailing_text = torch.cat([self.trailing_text, self.tts_eos], dim=1)
            self.text_final = True

    def text_available(self, frame: int) -> bool:
        """Whether the talker step after ``frame`` (0-based) has its text: always once the
        text is final (it reads padding past the end)."""
        return self.text_final or frame < self.trailing_text.shape[1]


def _tokens(tts, text: str) -> torch.Tensor:
    ids = tts.processor(text=text, return_tensors="pt", padding=True)["input_ids"]
    return (ids.unsqueeze(0) if ids.dim() == 1 else ids).to(tts.device)


def text_ids(tts, text: str) -> list[int]:
    """The token ids of ``text`` as the model reads it (inside the chat template: the
    template adds 3 tokens before the text and 5 after it)."""
    return _tokens(tts, tts._build_assistant_text(text))[0, 3:-5].tolist()


def _text_embed(talker, ids: torch.Tensor) -> torch.Tensor:
    return talker.text_projection(talker.get_text_embeddings()(ids))


@torch.inference_mode()
def text_embeddings(tts, ids: list[int]) -> torch.Tensor:
    """(1, n, hidden): what the talker reads for these text tokens."""
    talker = tts.model.talker
    return _text_embed(talker, torch.tensor([ids], dtype=torch.long, device=talker.device))


def reference_text_tokens(tts, clone_prompt: ClonePrompt) -> int:
    """Tokens of an in-context clone's reference transcript (as the prompt places them)."""
    return int(_tokens(tts, tts._build_ref_text(clone_prompt.reference_text))[:, 3:-2].shape[1])


def build_prompt(
    tts,
    text: str,
    language: str,
    speaker: str | None = None,
    instructions: str | None = None,
    clone_prompt: ClonePrompt | None = None,
    streaming_text: bool | None = None,
) -> TalkerPrompt:
    """The prompt for complete ``text``. ``streaming_text``: read the text one token per
    frame (default: CustomVoice reads it all first, Base one token per frame, as the package)."""
    input_id = _tokens(tts, tts._build_assistant_text(text))
    return _build(
        tts,
        input_id[:, :3],
        input_id[:, 3:-5],
        language,
        speaker,
        instructions,
        clone_prompt,
        streaming_text=clone_prompt is not None if streaming_text is None else streaming_text,
        text_final=True,
    )


def build_live_prompt(
    tts,
    ids: list[int],
    language: str,
    speaker: str | None = None,
    instructions: str | None = None,
    clone_prompt: ClonePrompt | None = None,
    final: bool = False,
) -> TalkerPrompt:
    """The prompt for text whose first tokens (``ids``) are known and more may follow
    (unless ``final``): read one token per frame, extended with ``TalkerPrompt.extend`` and
    ended with ``finish``. In-context cloning needs more text than the reference codes are
    long unless it is final (``live_start_tokens``); the others need one token."""
    role = _tokens(tts, tts._build_assistant_text("a"))[:, :3]
    target = torch.tensor([ids], dtype=torch.long, device=role.device)
    return _build(tts, role, target, language, speaker, instructions, clone_prompt, True, text_final=final)


def live_start_tokens(tts, clone_prompt: ClonePrompt | None) -> int:
    """How many text tokens a prompt whose text is still arriving needs before it can start:
    in-context cloning lays the text over the reference codes, and only text beyond them is
    read frame by frame."""
    if clone_prompt is None or clone_prompt.reference_codes is None:
        return 1
    reference_frames = int(clone_prompt.reference_codes.shape[0])
    return max(1, reference_frames + 2 - reference_text_tokens(tts, clone_prompt))


@torch.inference_mode()
def _build(
    tts,
    role_id: torch.Tensor,
    text_id: torch.Tensor,
    language: str,
    speaker: str | None,
    instructions: str | None,
    clone_prompt: ClonePrompt | None,
    streaming_text: bool,
    text_final: bool,
) -> TalkerPrompt:
    model = tts.model
    talker = model.talker
    cfg = model.config
    tcfg = cfg.talker_config
    device = talker.device

    def text_embed(ids: torch.Tensor) -> torch.Tensor:
        return _text_embed(talker, ids)

    def codec_embed(ids: list[int]) -> torch.Tensor:
        return talker.get_input_embeddings()(torch.tensor([ids], device=device, dtype=torch.long))

    # Speaker: a built-in speaker's codec row, or the clone prompt's x-vector.
    speaker_embed = None
    if clone_prompt is not None:
        speaker_embed = clone_prompt.speaker_embedding.to(device).to(talker.dtype)
    elif speaker:
        speaker_embed = talker.get_input_embeddings()(
            torch.tensor(tcfg.spk_id[speaker.lower()], device=device, dtype=torch.long)
        )

    language_id = None if language.lower() == "auto" else tcfg.codec_language_id[language.lower()]
    if language.lower() in ("chinese", "auto") and speaker and tcfg.spk_is_dialect[speaker.lower()] is not False:
        language_id = tcfg.codec_language_id[tcfg.spk_is_dialect[speaker.lower()]]

    tts_bos, tts_eos, tts_pad = text_embed(
        torch.tensor([[cfg.tts_bos_token_id, cfg.tts_eos_token_id, cfg.tts_pad_token_id]], device=device)
    ).chunk(3, dim=1)

    if language_id is None:
        tags = [tcfg.codec_nothink_id, tcfg.codec_think_bos_id, tcfg.codec_think_eos_id]
    else:
        tags = [tcfg.codec_think_id, tcfg.codec_think_bos_id, language_id, tcfg.codec_think_eos_id]
    codec_prefix = [codec_embed(tags)]
    if speaker_embed is not None:
        codec_prefix.append(speaker_embed.view(1, 1, -1))
    codec_prefix.append(codec_embed([tcfg.codec_pad_id, tcfg.codec_bos_id]))
    codec_input = torch.cat(codec_prefix, dim=1)

    role = text_embed(role_id)  # "<|im_start|>assistant\n"
    tagged = torch.cat((tts_pad.expand(-1, codec_input.shape[1] - 2, -1), tts_bos), dim=1) + codec_input[:, :-1]
    prefill = torch.cat((role, tagged), dim=1)
    # The text's end marker follows the text, once the text is known to be complete.
    ending = [tts_eos] if text_final else []

    ref_codes = None
    if clone_prompt is not None and clone_prompt.reference_codes is not None:
        ref_codes = clone_prompt.reference_codes.to(device)
        ref_id = _tokens(tts, tts._build_ref_text(clone_prompt.reference_text))
        icl, trailing = _icl_prompt(model, text_id, ref_id[:, 3:-2], ref_codes, tts_pad, ending)
        prefill = torch.cat([prefill, icl], dim=1)
    elif streaming_text:
        # The first token goes with the codec's start; the rest follow one per frame.
        prefill = torch.cat([prefill, text_embed(text_id[:, :1]) + codec_input[:, -1:]], dim=1)
        trailing = torch.cat([text_embed(text_id[:, 1:]), *ending], dim=1)
    else:
        # All of the text before the first frame (the package's non_streaming_mode=True).
        pads = codec_embed([tcfg.codec_pad_id] * (text_id.shape[1] + 1))
        body = torch.cat((text_embed(text_id), tts_eos), dim=1) + pads
        prefill = torch.cat([prefill, body, tts_pad + codec_embed([tcfg.codec_bos_id])], dim=1)
        trailing = tts_pad
    if instructions:
        instruct_id = _tokens(tts, tts._build_instruct_text(instructions))
        prefill = torch.cat([text_embed(instruct_id), prefill], dim=1)
    return TalkerPrompt(
        prefill=prefill,
        trailing_text=trailing,
        tts_pad=tts_pad,
        ref_codes=ref_codes,
        text_tokens=int(text_id.shape[1]),
        tts_eos=tts_eos,
        text_final=text_final,
    )


def _icl_prompt(model, text_id, ref_id, ref_code, tts_pad, ending: list[torch.Tensor]):
    """In-context cloning: reference text + target text over reference codes (streaming text
    input). Text beyond the codes is read one token per frame; ``ending`` is the end marker,
    or nothing while the text is still arriving (it must then outrun the codes)."""
    talker = model.talker
    tcfg = model.config.talker_config
    text = talker.text_projection(talker.get_text_embeddings()(torch.cat([ref_id, text_id], dim=-1)))
    text = torch.cat([text, *ending], dim=1)
    groups = [talker.get_input_embeddings()(ref_code[:, :1])]
    groups += [
        talker.code_predictor.get_input_embeddings()[i - 1](ref_code[:, i : i + 1])
        for i in range(1, tcfg.num_code_groups)
    ]
    codec = torch.cat(groups, dim=1).sum(1).unsqueeze(0)
    bos = talker.get_input_embeddings()(torch.tensor([[tcfg.codec_bos_id]], device=talker.device))
    codec = torch.cat([bos, codec], dim=1)
    if text.shape[1] > codec.shape[1]:
        return text[:, : codec.shape[1]] + codec, text[:, codec.shape[1] :]
    assert ending, "text still arriving must be longer than the reference codes"
    padded = torch.cat([text] + [tts_pad] * (codec.shape[1] - text.shape[1]), dim=1)
    return padded + codec, tts_pad
