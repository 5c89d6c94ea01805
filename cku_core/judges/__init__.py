"""Judges: refusal keywords, an LLM judge (1-5), the embedding judge (content similarity to the
original model's harmful answers), the knowledge-level NLL judge, and the degenerate-output
detector. Each is versioned; the version is stored with every verdict."""

from cku_core.judges.base import ResponseJudge, Verdict
from cku_core.judges.degenerate import DegenerateDetector
from cku_core.judges.embedding import Calibration, EmbeddingJudge, EmbeddingJudgeConfig, SentenceEmbedder
from cku_core.judges.keyword import REFUSAL_PHRASES, RefusalKeywordJudge
from cku_core.judges.knowledge import KnowledgeResult, knowledge_nll
from cku_core.judges.llm import JUDGE_PROMPT, LLMJudge

__all__ = [
    "JUDGE_PROMPT", "REFUSAL_PHRASES", "Calibration", "DegenerateDetector", "EmbeddingJudge", "EmbeddingJudgeConfig",
    "KnowledgeResult", "LLMJudge", "RefusalKeywordJudge", "ResponseJudge", "SentenceEmbedder", "Verdict",
    "knowledge_nll",
]
