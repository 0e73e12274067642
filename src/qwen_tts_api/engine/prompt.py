"""Builds the talker's input for one request, exactly as ``qwen_tts`` does inside ``generate``.

The package has no public function for this step, so it is mirrored here for a single
request: CustomVoice (speaker, optional instruction) and Base (x-vector or in-context
cloning). ``tests/test_generation_equivalence.py`` checks that the codes we generate from
it equal the package's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..voices.prompt import ClonePrompt


@dataclass
class TalkerPrompt:
    prefill: torch.Tensor  # (1, T, hidden): everything the talker reads before the first frame
    trailing_text: torch.Tensor  # (1, L, hidden): text fed one position per generated frame
    tts_pad: torch.Tensor  # (1, 1, hidden): fed once the trailing text is used up
    ref_codes: torch.Tensor | None = None  # (R, 16) reference frames (in-context cloning)
    text_tokens: int = 0  # tokens of the text itself, for usage reports


def _tokens(tts, text: str) -> torch.Tensor:
    ids = tts.processor(text=text, return_tensors="pt", padding=True)["input_ids"]
    return (ids.unsqueeze(0) if ids.dim() == 1 else ids).to(tts.device)


@torch.inference_mode()
def build_prompt(
    tts,
    text: str,
    language: str,
    speaker: str | None = None,
    instructions: str | None = None,
    clone_prompt: ClonePrompt | None = None,
) -> TalkerPrompt:
    model = tts.model
    talker = model.talker
    cfg = model.config
    tcfg = cfg.talker_config
    device = talker.device

    def text_embed(ids: torch.Tensor) -> torch.Tensor:
        return talker.text_projection(talker.get_text_embeddings()(ids))

    def codec_embed(ids: list[int]) -> torch.Tensor:
        return talker.get_input_embeddings()(torch.tensor([ids], device=device, dtype=torch.long))

    input_id = _tokens(tts, tts._build_assistant_text(text))
    parts: list[torch.Tensor] = []
    if instructions:
        parts.append(text_embed(_tokens(tts, tts._build_instruct_text(instructions))))

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

    role = text_embed(input_id[:, :3])  # "<|im_start|>assistant\n"
    tagged = torch.cat((tts_pad.expand(-1, codec_input.shape[1] - 2, -1), tts_bos), dim=1) + codec_input[:, :-1]
    prefill = torch.cat((role, tagged), dim=1)

    ref_codes = None
    if clone_prompt is not None and clone_prompt.in_context:
        ref_codes = clone_prompt.reference_codes.to(device)
        ref_id = _tokens(tts, tts._build_ref_text(clone_prompt.reference_text))
        icl, trailing = _icl_prompt(model, input_id[:, 3:-5], ref_id[:, 3:-2], ref_codes, tts_pad, tts_eos)
        prefill = torch.cat([prefill, icl], dim=1)
    else:
        first_text = text_embed(input_id[:, 3:4]) + codec_input[:, -1:]
        prefill = torch.cat([prefill, first_text], dim=1)
        if clone_prompt is None:
            # CustomVoice reads the whole text up front (the package's non_streaming_mode=True).
            prefill = prefill[:, :-1]
            body = text_embed(input_id[:, 3:-5])
            body = torch.cat((body, tts_eos), dim=1) + codec_embed([tcfg.codec_pad_id] * (body.shape[1] + 1))
            prefill = torch.cat([prefill, body, tts_pad + codec_embed([tcfg.codec_bos_id])], dim=1)
            trailing = tts_pad
        else:
            # Base reads the text one token per frame (the package's default there).
            trailing = torch.cat((text_embed(input_id[:, 4:-5]), tts_eos), dim=1)
    if instructions:
        prefill = torch.cat([parts[0], prefill], dim=1)
    # The chat template adds 3 tokens before the text and 5 after it.
    return TalkerPrompt(
        prefill=prefill,
        trailing_text=trailing,
        tts_pad=tts_pad,
        ref_codes=ref_codes,
        text_tokens=int(input_id.shape[1]) - 8,
    )


def _icl_prompt(model, text_id, ref_id, ref_code, tts_pad, tts_eos):
    """In-context cloning: reference text + target text over reference codes (streaming text input)."""
    talker = model.talker
    tcfg = model.config.talker_config
    text = talker.text_projection(talker.get_text_embeddings()(torch.cat([ref_id, text_id], dim=-1)))
    text = torch.cat([text, tts_eos], dim=1)
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
    padded = torch.cat([text] + [tts_pad] * (codec.shape[1] - text.shape[1]), dim=1)
    return padded + codec, tts_pad
