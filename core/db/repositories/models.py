"""An organisation's trained models and their lineage."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select

from core.db.models import (
    Model,
)
from core.db.repositories.base import OwnedRepository, Page, page_of


class ModelRepository(OwnedRepository):
    row_type = Model

    def list(self, offset: int, limit: int) -> Page[Model]:
        query = self._owned(select(Model)).order_by(Model.created_at.desc(), Model.id)
        return page_of(self.session, query, offset, limit)

    def lineage(self, model: Model, max_depth: int = 100) -> list[Model]:
        """The model's ancestors, nearest first, back to the first fine-tune of the base model;
        a deleted ancestor is there as its tombstone."""
        chain: list[Model] = []
        current = model
        while current.parent_id is not None and len(chain) < max_depth:
            parent = self.session.scalar(
                self._owned(select(Model).where(Model.id == current.parent_id), deleted=None)
            )
            if parent is None:
                break
            chain.append(parent)
            current = parent
        return chain

    def trained_on(self, dataset_id: str) -> list[str]:
        """Live models whose own training notes were this dataset."""
        query = self._owned(select(Model.id)).where(Model.train_dataset_id == dataset_id).order_by(Model.id)
        return list(self.session.scalars(query).all())

    def learnt_from(self, dataset_id: str) -> list[str]:
        """Live models whose weights were learnt from this dataset's notes: trained on it, and the
        models fine-tuned from those."""
        trained = self.trained_on(dataset_id)
        return trained + [model for model in self.descendants(trained) if model not in trained]

    def descendants(self, model_ids: Sequence[str]) -> list[str]:
        """The live models fine-tuned from these, their children and so on, nearest first."""
        found: list[str] = []
        frontier = list(model_ids)
        while frontier:
            children = self.session.scalars(
                self._owned(select(Model.id)).where(Model.parent_id.in_(frontier)).order_by(Model.id)
            ).all()
            frontier = [child for child in children if child not in found]
            found.extend(frontier)
        return found

    def set_deleted(self, model_ids: Sequence[str], now: datetime) -> list[str]:
        """Tombstones keep what a lineage shows (method, stage, parent, base model); the rest goes."""
        return self._set_deleted(
            model_ids, now, name=None, hyperparameters={}, data_summary={}, metrics={}, manifest={}
        )
