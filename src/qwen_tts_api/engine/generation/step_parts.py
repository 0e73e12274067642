"""A model's compact step parts: the talker forward, the code predictor and the talker's
token choice, built once when the engine takes the model and shared by its batches."""

from __future__ import annotations

from dataclasses import dataclass

from .code_predictor import CodePredictor
from .compiled import CompiledFrame, CompiledTalker, CompileMode
from .sampling import SamplingParams
from .talker_choice import TalkerChoice
from .transformer import DecoderStack


@dataclass(frozen=True)
class StepParts:
    """A model's compact talker forward and code-predictor loop, built once when the engine
    takes the model (``build`` joins the q/k/v and gate/up weights in place, see
    ``transformer.join_weights``), then shared by every batch of that model. With ``compiled``, both
    forwards run as compiled graphs (``compiled.py``; ``mode`` is torch.compile's)."""

    stack: DecoderStack
    code_predictor: CodePredictor
    chooser: TalkerChoice
    talker_graph: CompiledTalker | None = None

    @classmethod
    def build(
        cls,
        talker,
        params: SamplingParams,
        compiled: bool = False,
        mode: CompileMode = None,
        talker_rows: int | None = None,
    ) -> StepParts:
        """``talker_rows``: batches up to this size run the compiled talker step, larger ones
        the eager one (None: any size; see ``compiled.talker_graph_rows``)."""
        stack, predictor, chooser = (
            DecoderStack(talker.model),
            CodePredictor(talker, params),
            TalkerChoice(talker, params),
        )
        if not compiled:
            return cls(stack, predictor, chooser)
        predictor.graph = CompiledFrame(predictor.stack, predictor.frame, predictor.choices.narrow, mode)
        graph = CompiledTalker(stack, chooser.next_tokens, chooser.choices.narrow, mode, talker_rows)
        return cls(stack, predictor, chooser, graph)
