"""Preference pairs: one context (chat messages ending on the client's turn), a chosen and a rejected reply.

The reader of the published pair layouts (TRL, LLaMA-Factory ranking, ms-swift) belongs here too; this file
holds the shared type first (the contract in the issue: the DPO core builds trees from it).
"""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preference:
    messages: tuple[dict, ...]  # the context: an optional system message, then user/assistant, ending on a user turn
    chosen: str  # the preferred counsellor reply (non-empty, think blocks removed)
    rejected: str  # the dispreferred reply (non-empty, != chosen)
    where: str  # "<file>#<record index>" for messages
    origin: dict = field(default_factory=dict)  # provenance when the record has it (judge, rubric, scores), else {}
