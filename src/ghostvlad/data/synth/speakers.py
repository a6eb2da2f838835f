"""espeak-ng speakers: the voice pools, a speaker's :class:`Voice` (language, variant, pitch, range, rate and
vocal-tract warp), its speech, and the random draws of a voice and of a session's drift."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import soxr

from .. import espeak
from ..dsp import SAMPLE_RATE
from .errors import SynthError

LANGUAGES = (
    "en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
    "de", "nl", "af", "sv", "da", "nb", "fr", "fr-be", "es", "es-419", "it", "pt", "pt-br", "ro", "ca",
    "pl", "cs", "sk", "hr", "sl", "fi", "et", "hu", "id", "ms", "sw", "tr", "eo", "cy", "ga", "is", "lv", "lt",
)


MALE_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6",
    "Alex", "Andy", "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario",
    "Michael", "Mike", "Nguyen", "Reed", "Storm", "adam", "announcer", "antonio", "benjamin", "boris", "caleb",
    "david", "ed", "edward", "edward2", "grandpa", "gustave", "ian", "iven", "iven2", "iven3", "iven4", "john",
    "kaukovalta", "marcelo", "max", "michel", "miguel", "mike2", "norbert", "pablo", "paul", "pedro", "quincy", "rob",
    "robert", "sandro", "travis", "victor",
)


FEMALE_VARIANTS = (
    "f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty", "belinda", "grandma", "linda",
    "shelby", "steph", "steph2", "steph3",
)


KLATT_VARIANTS = ("klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6")


# speaker pools: (female variants, male variants). espeak-ng's klatt variants use another synthesiser (Klatt's
# cascade/parallel formant synthesiser) than the others, so "formant" and "klatt" make two families of voices.
VOICE_POOLS = {
    "all": (FEMALE_VARIANTS, MALE_VARIANTS),
    "formant": (FEMALE_VARIANTS, tuple(v for v in MALE_VARIANTS if v not in KLATT_VARIANTS)),
    "klatt": (KLATT_VARIANTS, KLATT_VARIANTS),
}


@dataclass(frozen=True)
class Voice:
    """A speaker's voice: espeak-ng ``language+variant`` and perceptual targets (after the warp)."""

    language: str
    variant: str
    pitch: float  # espeak pitch scale 0-100 (F0 factor 2**((pitch-50)/50) of the variant's base)
    pitch_range: float  # espeak range 0-100
    rate: float  # words per minute
    warp: float  # formant scale factor

    def __post_init__(self) -> None:
        if not (0 <= self.pitch <= 100 and 0 <= self.pitch_range <= 100 and self.rate > 0 and 0.5 <= self.warp <= 2):
            raise SynthError(f"Voice: pitch and pitch_range must be in [0, 100], rate > 0, warp in [0.5, 2]: {self}")

    @property
    def gender(self) -> str:
        return "f" if self.variant in FEMALE_VARIANTS else "m"

    @property
    def espeak_name(self) -> str:
        return f"{self.language}+{self.variant}"

    def speak(self, text: str, seed: int = 0) -> np.ndarray:
        """See :func:`speak`."""
        return speak(self, text, seed)

    def espeak_parameters(self) -> dict[str, int]:
        """espeak pitch/range/rate that give the target pitch and tempo once the warp has scaled both by ``warp``."""
        return {
            "pitch": int(np.clip(round(self.pitch - 50 * math.log2(self.warp)), 0, 100)),
            "range": int(np.clip(round(self.pitch_range / self.warp), 0, 100)),
            "rate": int(round(self.rate / self.warp)),
        }


def speak(voice: Voice, text: str, seed: int = 0) -> np.ndarray:
    """Clean float32 speech at SAMPLE_RATE: espeak-ng synthesis, then the vocal-tract warp.

    Deterministic for a given seed as long as nothing else in the process holds libespeak-ng open; not thread-safe.
    """
    params = voice.espeak_parameters()
    samples = espeak.synthesize(text, voice.espeak_name, params["pitch"], params["range"], params["rate"], seed)
    return soxr.resample(samples.astype(np.float32) / 32768.0, espeak.RATE * voice.warp, SAMPLE_RATE).astype(np.float32)


def draw_voice(rng: np.random.Generator, pool: str = "all") -> Voice:
    female, male = VOICE_POOLS[pool]
    return Voice(
        language=str(rng.choice(LANGUAGES)),
        variant=str(rng.choice(female if rng.random() < 0.5 else male)),
        pitch=round(float(rng.uniform(22, 78)), 1),
        pitch_range=round(float(rng.uniform(15, 90)), 1),
        rate=round(float(rng.uniform(130, 215)), 1),
        warp=round(float(rng.uniform(0.85, 1.15)), 4),
    )


def drift_voice(voice: Voice, rng: np.random.Generator, scale: float = 1.0) -> Voice:
    """A session's small change of an espeak voice's pitch (a normal draw of sd 2.5 units, about 3.5 % of F0) and
    rate (within +-7 %), both times ``scale`` (the same draws whatever the scale; 0 keeps the voice)."""
    return replace(
        voice,
        pitch=round(float(np.clip(voice.pitch + scale * rng.normal(0, 2.5), 0, 100)), 1),
        rate=round(voice.rate * (1 + scale * (float(rng.uniform(0.93, 1.07)) - 1)), 1),
    )
