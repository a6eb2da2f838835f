"""JSON bodies of the service's answers (they make the OpenAPI documentation)."""
from __future__ import annotations

from pydantic import BaseModel, Field

from ..scoring.calibration import Decision, OperatingPoint


class Error(BaseModel):
    detail: str = Field(description="One line saying what was wrong, e.g. 'a.wav: too short: 0.2 s, minimum is 0.5 s'.")


class Point(BaseModel):
    name: str = Field(description="eer, far@0.01, bayes, given (a threshold in the request) or stored (the model's).")
    threshold: float

    @classmethod
    def of(cls, point: OperatingPoint | None) -> Point | None:
        return None if point is None else cls(name=point.name, threshold=point.threshold)


class Embedding(BaseModel):
    embedding: list[float] = Field(description="Unit-norm embedding.")
    duration: float = Field(description="Seconds of audio embedded.")


class Verification(BaseModel):
    score: float = Field(description="Cosine similarity of the two recordings' embeddings.")
    decision: str | None = Field(description="'same' or 'different'; null when the model has no threshold.")
    llr: float | None = Field(description="Log-likelihood ratio (calibrated models).")
    p_same: float | None = Field(description="P(same speaker) at `prior` (calibrated models).")
    prior: float
    operating_point: Point | None

    @classmethod
    def of(cls, d: Decision) -> Verification:
        decision = None if d.accept is None else ("same" if d.accept else "different")
        return cls(score=d.score, decision=decision, llr=d.llr, p_same=d.p_same, prior=d.prior,
                   operating_point=Point.of(d.point))


class Candidate(BaseModel):
    name: str
    score: float
    utterances: int
    accepted: bool | None
    llr: float | None
    p_same: float | None


class Identification(BaseModel):
    matches: list[Candidate] = Field(description="Best first.")
    identified: str | None = Field(description="The best match when it passes the operating point, else null "
                                               "(an unknown speaker, or no threshold known).")
    operating_point: Point | None


class Enrolment(BaseModel):
    name: str
    added: int = Field(description="Recordings added by this request.")
    utterances: int = Field(description="Recordings of the speaker in all.")
    speakers: int = Field(description="Speakers in the gallery.")


class Speaker(BaseModel):
    name: str
    utterances: int
    created: float = Field(description="Unix time.")
    updated: float = Field(description="Unix time.")


class Speakers(BaseModel):
    speakers: list[Speaker]


class Removal(BaseModel):
    name: str
    removed: int = Field(description="Recordings removed with the speaker.")


class Health(BaseModel):
    status: str
    model: str = Field(description="Model key and configuration.")
    embed_dim: int
    sample_rate: int
    gallery: bool = Field(description="Whether the server has a speaker gallery (--db).")
    queued: int = Field(description="Waveforms waiting for or in the model.")
    batches: int = Field(description="Batches run since start.")
    embedded: int = Field(description="Waveforms embedded since start.")
    largest_batch: int
