"""A deterministic, realistic corpus of podcast episodes for the search tests.

``generate(seed)`` builds the same episodes every time: titles, summaries and
transcripts of a few hundred words drawn from a vocabulary of real English words
(singular and plural nouns, ``-ing`` and ``-ed`` forms, spoken fillers and stop
words), shows, guests and topics, in the three metadata layouts the pipeline
writes (flat keys, per-stage sections, and an ``episode`` section). A few words
are planted so that queries have a known shape:

* :data:`PLANTED`: one episode is clearly the best match (word in its title,
  repeated in its summary and transcript), a handful of others mention it once
  in their transcript;
* :data:`TRANSCRIPT_ONLY`: words that appear only in transcripts;
* topic words (:data:`TOPICS`) and guest surnames appear nowhere else.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

SEED = 20261125
SIZE = 240

SHOWS = (
    "The Daily Byte",
    "Garden Talk",
    "Deep Space Hour",
    "Kitchen Chemistry",
    "Market Watch",
    "History Unpacked",
    "Sound & Story",
    "Trail Running Weekly",
)

#: Topic labels; their words are used nowhere but in topics.
TOPICS = (
    "permaculture",
    "astrophysics",
    "cryptography",
    "mindfulness",
    "geopolitics",
    "fermentation",
    "entrepreneurship",
    "ornithology",
    "Mycology",
    "Viticulture",
)

#: Guests; their surnames are used nowhere but in guest lists.
GUESTS = (
    "Amara Okonkwo",
    "Björn Lindqvist",
    "Chiara Marchetti",
    "Diego Castellanos",
    "Eleanor Abernathy",
    "Farid Haddad",
    "Grace Kowalczyk",
    "Hiroshi Nakamura",
    "Ingrid Sørensen",
    "Jamal Oyelaran",
    "Keiko Tanabe",
    "Lucía Álvarez",
    "Mateo Delacroix",
    "Nadia Petrossian",
    "Priya Raghunathan",
    "Quentin Fairweather",
    "Rosa Villanueva",
    "Zoë Whitcombe",
)

# (singular, plural) nouns of everyday talk.
NOUNS = (
    ("garden", "gardens"),
    ("farmer", "farmers"),
    ("tomato", "tomatoes"),
    ("river", "rivers"),
    ("city", "cities"),
    ("market", "markets"),
    ("engine", "engines"),
    ("rocket", "rockets"),
    ("planet", "planets"),
    ("telescope", "telescopes"),
    ("galaxy", "galaxies"),
    ("satellite", "satellites"),
    ("battery", "batteries"),
    ("computer", "computers"),
    ("algorithm", "algorithms"),
    ("network", "networks"),
    ("startup", "startups"),
    ("investor", "investors"),
    ("company", "companies"),
    ("budget", "budgets"),
    ("recipe", "recipes"),
    ("kitchen", "kitchens"),
    ("oven", "ovens"),
    ("spice", "spices"),
    ("vegetable", "vegetables"),
    ("museum", "museums"),
    ("empire", "empires"),
    ("castle", "castles"),
    ("soldier", "soldiers"),
    ("treaty", "treaties"),
    ("song", "songs"),
    ("guitar", "guitars"),
    ("album", "albums"),
    ("drummer", "drummers"),
    ("concert", "concerts"),
    ("runner", "runners"),
    ("marathon", "marathons"),
    ("mountain", "mountains"),
    ("trail", "trails"),
    ("forest", "forests"),
    ("ocean", "oceans"),
    ("storm", "storms"),
    ("glacier", "glaciers"),
    ("doctor", "doctors"),
    ("hospital", "hospitals"),
    ("vaccine", "vaccines"),
    ("habit", "habits"),
    ("teacher", "teachers"),
    ("student", "students"),
    ("library", "libraries"),
    ("story", "stories"),
    ("family", "families"),
    ("child", "children"),
    ("village", "villages"),
    ("bridge", "bridges"),
    ("island", "islands"),
    ("wolf", "wolves"),
    ("bird", "birds"),
    ("flower", "flowers"),
    ("seed", "seeds"),
    ("harvest", "harvests"),
    ("policy", "policies"),
    ("election", "elections"),
    ("journalist", "journalists"),
    ("camera", "cameras"),
    ("password", "passwords"),
    ("robot", "robots"),
    ("sensor", "sensors"),
    ("dinosaur", "dinosaurs"),
    ("fossil", "fossils"),
    ("volcano", "volcanoes"),
    ("earthquake", "earthquakes"),
    ("cheese", "cheeses"),
    ("festival", "festivals"),
    ("virus", "viruses"),
    ("campus", "campuses"),
)

# (base, -ing, past) verbs.
VERBS = (
    ("plant", "planting", "planted"),
    ("build", "building", "built"),
    ("grow", "growing", "grew"),
    ("cook", "cooking", "cooked"),
    ("bake", "baking", "baked"),
    ("train", "training", "trained"),
    ("run", "running", "ran"),
    ("paint", "painting", "painted"),
    ("launch", "launching", "launched"),
    ("measure", "measuring", "measured"),
    ("discover", "discovering", "discovered"),
    ("explore", "exploring", "explored"),
    ("invest", "investing", "invested"),
    ("record", "recording", "recorded"),
    ("teach", "teaching", "taught"),
    ("repair", "repairing", "repaired"),
    ("design", "designing", "designed"),
    ("predict", "predicting", "predicted"),
    ("listen", "listening", "listened"),
    ("debate", "debating", "debated"),
    ("harvest", "harvesting", "harvested"),
    ("climb", "climbing", "climbed"),
)

ADJECTIVES = (
    "ancient",
    "quiet",
    "bright",
    "modern",
    "tiny",
    "massive",
    "wild",
    "fresh",
    "strange",
    "brave",
    "rural",
    "digital",
    "local",
    "hidden",
    "frozen",
    "golden",
    "electric",
    "honest",
    "early",
    "new",
)

#: What people say between the content words (realistic, and mostly stop words).
FILLERS = (
    "honestly",
    "actually",
    "really",
    "you know",
    "basically",
    "I mean",
    "so",
    "well",
    "right",
    "in the news",
)

#: Words found only in transcripts.
TRANSCRIPT_ONLY = ("kettle", "lantern", "compass", "umbrella", "backpack")

#: word -> (index of the episode that clearly matches best, indexes mentioning it once).
PLANTED = {
    "zeppelin": (18, (4, 40, 88, 151, 201)),
    "saffron": (64, (9, 65, 120, 198)),
    "origami": (131, (2, 77, 160)),
    "lighthouse": (222, (15, 99, 180, 223)),
    "accordion": (5, (6, 50, 230)),
}

_TITLES = (
    "{Adj} {pl} and the {noun} of {Noun2}",
    "Why {pl} matter: {verb_ing} the {adj} {noun}",
    "The {noun} {verb_past} our {pl2}",
    "{Verb_ing} {pl} in a {adj} {noun2}",
    "On {pl}, {pl2} and {adj} {pl3}",
)

_SENTENCES = (
    "{filler}, we were {verb_ing} the {pl} near the {noun} last week.",
    "I think the {adj} {noun} is the part that people miss.",
    "When you look at the {pl}, the {noun2} tells a {adj} story.",
    "My {noun} {verb_past} the {pl2} before anyone noticed.",
    "{filler}, {verb_ing} {pl} is harder than {verb_ing2} a {noun}.",
    "There are so many {pl} and {pl2} out there, {filler}.",
    "We talked about how the {noun} changes when {pl} start {verb_ing}.",
    "And then the {adj} {pl} were gone, just like that.",
    "If you {verb} the {noun} early, the {pl2} follow.",
    "{filler}, it was the {noun} of the {noun2} that surprised us.",
)


@dataclass(frozen=True)
class CorpusEpisode:
    """One episode to register: keyword arguments for ``Episodes.register``."""

    id: str
    hash: str
    source_path: str
    file_size: int
    metadata: dict[str, Any]

    def register_kwargs(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "hash": self.hash,
            "source_path": self.source_path,
            "file_size": self.file_size,
            "metadata": self.metadata,
        }


def episode_id(index: int) -> str:
    """The id of the corpus episode at ``index``."""
    return f"ep{index:04d}"


def generate(seed: int = SEED, size: int = SIZE) -> list[CorpusEpisode]:
    """``size`` episodes, the same ones for the same seed."""
    rng = random.Random(seed)
    planted_best = {best: word for word, (best, _) in PLANTED.items()}
    planted_once: dict[int, list[str]] = {}
    for word, (_, others) in PLANTED.items():
        for index in others:
            planted_once.setdefault(index, []).append(word)
    start = date(2019, 1, 7)
    episodes = []
    for index in range(size):
        show = SHOWS[index % len(SHOWS)]
        title = _phrase(rng, rng.choice(_TITLES))
        summary = " ".join(_phrase(rng, rng.choice(_SENTENCES)) for _ in range(rng.randint(2, 4)))
        transcript = _transcript(rng, rng.randint(200, 420))
        best = planted_best.get(index)
        if best is not None:
            title = f"The {best.capitalize()} {title}"
            summary = f"All about the {best}: {summary} Why the {best} still matters."
            transcript = " ".join(
                [transcript, *(f"The {best} was everything, the {best} again." for _ in range(3))]
            )
        for word in planted_once.get(index, []):
            transcript = f"{transcript} Someone once mentioned a {word} here."
        guests = rng.sample(GUESTS, k=rng.choice((0, 1, 1, 2)))
        topics = rng.sample(TOPICS, k=rng.randint(1, 3))
        with_transcript = index % 7 != 3
        metadata = _layout(
            index,
            show=show,
            title=title,
            summary=summary,
            transcript=transcript if with_transcript else None,
            day=start + timedelta(days=index * 6 + rng.randint(0, 5)),
            duration=float(rng.randint(600, 7200)),
            guests=guests,
            topics=topics,
        )
        slug = title.lower().replace(" ", "-")[:40]
        episodes.append(
            CorpusEpisode(
                id=episode_id(index),
                hash=hashlib.sha256(f"{seed}:{index}".encode()).hexdigest(),
                source_path=f"/media/{show.split()[-1].lower()}/{index:04d}-{slug}.mp4",
                file_size=rng.randint(50, 900) * 1_000_000,
                metadata=metadata,
            )
        )
    return episodes


def _layout(
    index: int,
    *,
    show: str,
    title: str,
    summary: str,
    transcript: str | None,
    day: date,
    duration: float,
    guests: list[str],
    topics: list[str],
) -> dict[str, Any]:
    """The metadata document in one of the three layouts the pipeline writes."""
    layout = index % 3
    if layout == 0:  # per-stage sections: transcript, enrichment, editorial
        document: dict[str, Any] = {
            "show_name": show,
            "date": day.isoformat(),
            "duration_seconds": duration,
            "enrichment": {
                "summary": summary,
                "guests": [{"name": name, "role": "guest"} for name in guests],
                "topics": topics,
            },
            "editorial": {"title": title},
        }
        if transcript is not None:
            document["transcript"] = {"text": transcript, "language": "en"}
        return document
    if layout == 1:  # flat keys, as early pipeline versions wrote them
        document = {
            "show": show,
            "title": title,
            "summary": summary,
            "published_date": f"{day.isoformat()}T10:00:00Z",
            "duration": duration,
            "guest_names": guests,
            "tags": topics,
        }
        if transcript is not None:
            document["transcript_text"] = transcript
        return document
    document = {  # an episode section, plain-string guests, no editorial pass
        "episode": {"show_name": show, "title": title, "date": day.isoformat()},
        "duration_seconds": duration,
        "enrichment": {"summary": summary, "topics": topics, "guests": guests},
    }
    if transcript is not None:
        document["transcription"] = {"text": transcript}
    return document


def _transcript(rng: random.Random, words: int) -> str:
    sentences: list[str] = []
    total = 0
    while total < words:
        sentence = _phrase(rng, rng.choice(_SENTENCES))
        if rng.random() < 0.15:
            sentence = f"{sentence} There was a {rng.choice(TRANSCRIPT_ONLY)} on the table."
        sentences.append(sentence)
        total += len(sentence.split())
    return " ".join(sentences)


def _phrase(rng: random.Random, template: str) -> str:
    nouns = rng.sample(NOUNS, 4)
    verbs = rng.sample(VERBS, 2)
    adjective = rng.choice(ADJECTIVES)
    values = {
        "noun": nouns[0][0],
        "noun2": nouns[1][0],
        "pl": nouns[0][1],
        "pl2": nouns[2][1],
        "pl3": nouns[3][1],
        "verb": verbs[0][0],
        "verb_ing": verbs[0][1],
        "verb_ing2": verbs[1][1],
        "verb_past": verbs[0][2],
        "adj": adjective,
        "filler": rng.choice(FILLERS),
    }
    values |= {
        "Adj": adjective.capitalize(),
        "Noun2": nouns[1][0].capitalize(),
        "Verb_ing": verbs[0][1].capitalize(),
    }
    text = template.format(**values)
    return text[0].upper() + text[1:]
