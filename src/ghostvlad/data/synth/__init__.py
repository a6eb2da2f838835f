"""Synthetic multi-speaker corpus in VoxCeleb layout: espeak-ng voices heard through random per-session channels.

A speaker is an espeak-ng language/accent and voice variant plus its own pitch, pitch range, speaking rate and a
vocal-tract warp: the 22.05 kHz synthesis is resampled as if recorded at ``22050 * warp`` Hz, which scales formants
by ``warp``; F0 is kept (within a few per cent) through espeak's pitch and range parameters and tempo through its
rate. A session ("video") adds a small drift of the speaker's pitch and rate and its own channel: reverberation,
additive noise (white, pink, brown or babble of other voices) at a random SNR, equalisation, a band limit and a
level, shared by all of its utterances.

Everything is drawn from ``numpy.random.SeedSequence(seed, spawn_key=...)`` keyed by speaker, session and utterance,
and espeak-ng is loaded afresh for every synthesis (its C library keeps state between calls), so a seed gives
byte-identical files whatever the number of worker processes.

Re-running into the same directory with the same settings resumes: a session whose wav files all exist is kept (each
file is written to a temporary file and renamed, so a file that exists is complete); the others are regenerated.
``trials.txt`` and ``speakers.json`` are written last, so their presence marks a finished corpus.

A session speaks through any :class:`SpeechSource` (an espeak voice here): :func:`plan_speaker`,
:func:`render_sessions` and :func:`trial_lines` also build :mod:`ghostvlad.data.engine_set` from other engines.

Modules: ``plan`` (the config and every session, drawn from the seed), ``speakers`` (espeak-ng voices),
``channels`` (recording channels and their signal processing), ``words`` (text), ``render`` (sessions to wav files
in worker processes), ``trials`` (trial lists), ``corpus`` (the output folder and :func:`synthesize_corpus`),
``seeds`` (keyed random generators). espeak-ng is the ``synth`` extra (``pip install 'ghostvlad[synth]'``);
without it this package imports, and synthesis raises :class:`~ghostvlad.data.espeak.EspeakUnavailable`.
"""
from __future__ import annotations

from ..dsp import SAMPLE_RATE
from ..espeak import EspeakUnavailable
from .channels import CHANNEL_FAMILIES, FIELD_CODECS, NOISES, Channel
from .corpus import prepare_output, synthesize_corpus
from .plan import Session, SpeechSource, SynthConfig, plan_speaker, trial_files
from .render import OnProgress, render_sessions
from .speakers import VOICE_POOLS, Voice, speak
from .trials import trial_capacity, trial_lines

__all__ = ["CHANNEL_FAMILIES", "FIELD_CODECS", "NOISES", "SAMPLE_RATE", "VOICE_POOLS", "Channel", "EspeakUnavailable",
           "OnProgress", "Session", "SpeechSource", "SynthConfig", "Voice", "plan_speaker", "prepare_output",
           "render_sessions", "speak", "synthesize_corpus", "trial_capacity", "trial_files", "trial_lines"]
