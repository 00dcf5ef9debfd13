"""Build the built-in minimal-pair bank: ``interp/pairs/bank/<category>.jsonl``.

Regenerate (from the repository root)::

    .venv/bin/python scripts/build_bank.py            # writes interp/pairs/bank/*.jsonl
    .venv/bin/python scripts/build_bank.py --out DIR  # writes somewhere else

The output is deterministic: templates are sampled with ``random.Random`` seeded by a string
(category, template number, template text), so the same code and tokenizer give byte-identical
files. ``main(out_dir)`` does the whole job and is what ``tests/test_bank.py`` calls to check that
the committed files are up to date.

Every line of a bank file is ``{"pair_id", "a", "b", "category", "type"}``. For ``type: grammar``
sentence ``a`` is correct English and ``b`` has exactly one grammatical error; for
``type: semantic`` both sentences are fine and the edit changes the meaning (no correct side).

How pairs are made
------------------
Each category has hand-written pairs (written for this project) and templates with slot fillers.
A pair is written as one string with the edit in brackets, ``"Yesterday she [walked/walks] home."``:
the text before the slash gives sentence ``a``, the text after it sentence ``b``. Templates are
``str.format`` strings whose slot values may carry that bracket; each template contributes at most
``cap`` sampled fillings, so a category draws on many templates rather than one long word list.
The first character of each sentence is upper-cased after filling.

Before the tokenizer check, a candidate is dropped if a sentence is outside 4-15 words, or if an
"a"/"an" does not fit the next word anywhere except on the wrong side of an ``article`` pair (so a
semantic or other grammar pair never carries a second, accidental error).

Every candidate is checked with ``interp.pairs.validate.check_pair`` under the SmolLM2-135M
tokenizer (``conf/model/smollm2_135m.yaml``, i.e. the converted tokenizer in
``~/.cache/interp/SmolLM2-135M-Instruct-0.1.2``); only one-token edits are written. Pairs are
deduplicated within a category (for semantic pairs ``(a, b)`` and ``(b, a)`` count as one). The
script prints, per category, how many candidates there were, how many were kept and why the others
were dropped. Pair ids are ``<category>-NNNN`` in file order (hand-written pairs first).

Categories
----------
Semantic (both sentences fine, meaning differs):

* ``subject``   - the subject is swapped: pronoun, name, or noun ("[She/He] loves coffee.",
  "The [teacher/doctor] smiled."). Swaps keep verb agreement (she/he, we/they, or past tense).
* ``location``  - a place is swapped: city, country, room, building, piece of furniture
  ("They met in [Paris/Berlin].").
* ``adjective`` - an adjective is swapped, mostly for its antonym or a colour/size
  ("The soup was [hot/cold].").
* ``verb``      - the action is swapped with another verb taking the same arguments
  ("She [opened/closed] the door.").
* ``number``    - a quantity word is swapped: cardinal or ordinal number, or a quantifier
  ("She bought [three/five] apples.", "[Most/All] of the students passed.").

Grammar (``a`` correct, ``b`` one error):

* ``tense``        - a clearly past time frame ("yesterday", "two days ago", "In 1998") with the
  past verb replaced by a present form ("Yesterday she [walked/walks] home.").
* ``article``      - a/an chosen against the sound of the next word ("She ate [an/a] apple.",
  "a university", "an hour").
* ``preposition``  - a fixed preposition replaced by a wrong one, in adjective, verb and time
  collocations ("It depends [on/of] the weather.", "The meeting is [on/in] Monday."). Cases where
  the swapped preposition is also standard (good at/in, at/in school) are avoided.
* ``subject_verb_agreement`` - a lexical (or copular) verb in the present tense disagrees in number
  with its subject, also across attractor nouns and relative clauses ("The dogs [bark/barks].",
  "The girl with the red shoes [likes/like] cake."). Base forms that double as past tenses
  (read, cost, put) are not used, so the wrong side never reads as a past tense.
* ``determiner_number`` - a determiner disagrees in number with its noun: this/these, that/those,
  many/much, one/two, every/all, each/both ("[These/This] books are old.").
* ``pronoun_case`` - a personal pronoun in the wrong case: nominative for accusative and back
  ("They saw [him/he] there.", "[She/Her] left early."). Coordinations ("John and I") and
  "It is I" are avoided since usage is divided.
* ``auxiliary``    - an auxiliary (has/have, is/are, am, was/were, does/do) disagrees with the
  subject before a participle or base verb ("She [has/have] eaten.").
  ``subject_verb_agreement`` covers the main verb, ``auxiliary`` the helper verb.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from interp.pairs.validate import check_pair  # noqa: E402

BANK_DIR = REPO / "interp" / "pairs" / "bank"
MODEL_CONF = REPO / "conf" / "model" / "smollm2_135m.yaml"

MIN_WORDS, MAX_WORDS = 4, 15  # sentence length in words, both sides
EDIT = re.compile(r"\[([^\[\]/]+)/([^\[\]/]+)\]")


# --------------------------------------------------------------------------------------------
# machinery
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class T:
    """A template: ``text`` is a format string; ``slots`` maps slot name -> list of fillers."""

    text: str
    slots: dict
    cap: int = 8


@dataclass
class Category:
    name: str
    type: str  # grammar | semantic
    hand: list[str]  # hand-written pairs in bracket notation
    templates: list[T] = field(default_factory=list)


def split_edit(s: str) -> tuple[str, str]:
    """``"Yesterday she [walked/walks] home."`` -> ``("Yesterday she walked home.", ...)``."""
    m = list(EDIT.finditer(s))
    if len(m) != 1:
        raise ValueError(f"expected exactly one [a/b] edit in {s!r}")
    m = m[0]
    a = s[:m.start()] + m.group(1) + s[m.end():]
    b = s[:m.start()] + m.group(2) + s[m.end():]
    return a[:1].upper() + a[1:], b[:1].upper() + b[1:]


def expand(category: str, idx: int, t: T) -> list[str]:
    names = list(t.slots)
    combos = list(itertools.product(*(t.slots[n] for n in names)))
    if len(combos) > t.cap:
        combos = random.Random(f"{category}:{idx}:{t.text}").sample(combos, t.cap)
    return [t.text.format(**dict(zip(names, c))) for c in combos]


def swaps(words: list[str]) -> list[str]:
    """Every unordered pair of ``words`` as an edit; the direction alternates for variety."""
    out = []
    for i, (x, y) in enumerate(itertools.combinations(words, 2)):
        out.append(f"[{x}/{y}]" if i % 2 == 0 else f"[{y}/{x}]")
    return out


def chain(words: list[str]) -> list[str]:
    """Neighbouring words of ``words`` as edits (fewer pairs than ``swaps``)."""
    return [f"[{x}/{y}]" for x, y in zip(words, words[1:])]


def lower1(s: str) -> str:
    return s[:1].lower() + s[1:] if not s.startswith("I ") and s != "I" else s


# --------------------------------------------------------------------------------------------
# shared fillers
# --------------------------------------------------------------------------------------------

NAMES = ["Anna", "Maria", "John", "Peter", "Paul", "David", "Sarah", "Tom", "Jack", "James", "Mary",
         "Emily", "Alice", "Ben", "Sam", "Adam", "Daniel", "Michael", "Robert", "Chris", "Nick",
         "Jane", "Henry", "George", "Lucy", "Kate", "Laura", "Mark"]
PEOPLE = ["teacher", "doctor", "nurse", "farmer", "baker", "driver", "pilot", "lawyer", "student",
          "engineer", "artist", "writer", "singer", "chef", "manager", "neighbor", "officer",
          "soldier", "judge", "scientist", "professor", "actor", "dancer", "coach", "dentist", "guard"]
PEOPLE_PL = ["students", "teachers", "boys", "girls", "children", "parents", "players", "workers",
             "neighbors", "doctors", "nurses", "tourists", "guests", "kids", "farmers"]
KIN = ["brother", "sister", "mother", "father", "uncle", "aunt", "cousin", "son", "daughter", "wife",
       "husband", "grandmother", "grandfather", "friend", "boss"]
CITIES = ["Paris", "Berlin", "London", "Rome", "Tokyo", "Madrid", "Vienna", "Prague", "Lisbon",
          "Dublin", "Oslo", "Athens", "Cairo", "Moscow", "Boston", "Chicago", "Seattle", "Denver",
          "Sydney", "Toronto", "Beijing", "Istanbul", "Amsterdam", "Stockholm", "Warsaw", "Venice",
          "Milan", "Barcelona", "Munich", "Geneva", "Edinburgh", "Manchester", "Oxford"]
COUNTRIES = ["France", "Spain", "Italy", "Germany", "Japan", "China", "India", "Canada", "Mexico",
             "Brazil", "Egypt", "Greece", "Peru", "Chile", "Kenya", "Norway", "Sweden", "Ireland",
             "Poland", "Portugal", "Australia", "Russia"]

# past-tense verb phrases that fit any adult human subject
PAST_VP = ["finished the report early", "missed the bus again", "forgot the keys at home",
           "painted the kitchen last weekend", "cooked dinner for everyone", "won the chess game",
           "opened the window", "read the letter twice", "fixed the old bike",
           "found a wallet on the street", "left the party early", "answered the phone",
           "baked a cake for the party", "wrote a long email", "lost the umbrella",
           "booked a table for four", "cleaned the whole house", "called the office",
           "bought fresh bread", "sang a song at the wedding"]
# third-person singular present, habitual
PRES_SG_VP = ["plays the piano every evening", "lives next to the station", "works at the hospital",
              "drinks coffee without sugar", "walks the dog after dinner", "speaks three languages",
              "reads the news every morning", "grows tomatoes in the garden",
              "takes the train to work", "cooks on Sundays"]
PRES_PL_VP = ["play football on Sundays", "live near the river", "want a longer break",
              "walk home together", "eat lunch at noon", "sing in the choir",
              "meet every Friday", "need more time"]


# --------------------------------------------------------------------------------------------
# semantic: subject
# --------------------------------------------------------------------------------------------

def cat_subject() -> Category:
    hand = [
        "[She/He] loves coffee with milk.",
        "My [brother/sister] lives in Rome.",
        "Yesterday [Anna/Maria] called me twice.",
        "The [teacher/doctor] smiled at the children.",
        "[We/They] missed the last train home.",
        "After dinner, [he/she] washed the dishes.",
        "The [cat/dog] slept on the sofa all afternoon.",
        "I think [John/Peter] left the keys in the car.",
        "Every morning, [Tom/Sam] runs along the river.",
        "The [boys/girls] played football until dark.",
        "[You/I] forgot to lock the door.",
        "Last night the [neighbors/students] made a lot of noise.",
        "The [king/queen] gave a short speech.",
        "When the bell rang, the [students/teachers] left the room.",
        "[Mary/Jane] bought a new bike last week.",
        "The [pilot/captain] welcomed everyone on board.",
        "Suddenly [he/she] started to laugh.",
        "The [farmer/baker] gets up before sunrise.",
        "In the end, [David/Paul] won the race.",
        "The [children/parents] waited outside the school.",
        "On Sundays my [grandmother/grandfather] makes pancakes.",
        "The [nurse/doctor] checked his temperature.",
        "Most [cats/dogs] hate baths.",
        "The [manager/owner] opened the shop at nine.",
        "Before the meeting, [Sarah/Emily] printed the slides.",
        "The [girl/boy] in the red coat waved at us.",
        "[We/They] have lived here for ten years.",
        "My [uncle/aunt] taught me how to swim.",
        "Luckily, the [police/firefighters] arrived within minutes.",
        "Our [son/daughter] wants to be a pilot.",
    ]
    pron = ["She", "He", "We", "They", "I", "You"]
    pron_lc = ["she", "he", "we", "they", "I", "you"]
    animals = ["dog", "cat", "puppy", "kitten", "rabbit"]
    animal_vp = ["slept on the sofa all day", "hid under the bed", "ran across the garden",
                 "ate all the food", "drank some water", "followed us home", "sat by the door",
                 "woke me up early"]
    end_vp = ["came to the party", "won the race", "called back", "stayed for dinner",
              "found the keys", "passed the exam", "arrived on time"]
    habit = ["makes coffee for everyone", "feeds the cat", "checks the mail", "opens the shop",
             "goes for a run"]
    templates = [
        T("{x} {vp}.", {"x": swaps(pron), "vp": PAST_VP}, 14),
        T("Yesterday {x} {vp}.", {"x": swaps(NAMES), "vp": PAST_VP}, 12),
        T("After lunch, {x} {vp}.", {"x": swaps(pron_lc), "vp": PAST_VP}, 8),
        T("The {x} {vp}.", {"x": swaps(PEOPLE), "vp": PAST_VP}, 14),
        T("I think the {x} {vp}.", {"x": swaps(PEOPLE), "vp": PAST_VP}, 8),
        T("My {x} {vp}.", {"x": swaps(KIN), "vp": PAST_VP}, 12),
        T("My {x} {vp}.", {"x": swaps(KIN), "vp": PRES_SG_VP}, 8),
        T("{x} {vp}.", {"x": swaps(NAMES), "vp": PRES_SG_VP}, 12),
        T("The {x} {vp}.", {"x": swaps(animals), "vp": animal_vp}, 10),
        T("The {x} {vp}.", {"x": swaps(PEOPLE_PL), "vp": PRES_PL_VP}, 12),
        T("We were glad that {x} {vp}.", {"x": swaps(NAMES), "vp": end_vp}, 8),
        T("Everyone was surprised when {x} {vp}.", {"x": swaps(pron_lc), "vp": end_vp}, 8),
        T("When the bell rang, the {x} {vp}.",
          {"x": swaps(PEOPLE_PL), "vp": ["left the room", "stood up", "ran outside",
                                          "stopped talking"]}, 8),
        T("Every morning {x} {vp}.", {"x": swaps(NAMES), "vp": habit}, 8),
    ]
    return Category("subject", "semantic", hand, templates)


# --------------------------------------------------------------------------------------------
# semantic: location
# --------------------------------------------------------------------------------------------

def cat_location() -> Category:
    hand = [
        "They met in [Paris/Berlin].",
        "We spent the summer in [Italy/Spain] with friends.",
        "She left her keys in the [kitchen/car].",
        "The meeting is in the [library/office] at noon.",
        "He grew up in [Texas/Ohio] before moving east.",
        "My parents live in [London/Dublin] now.",
        "We had lunch at the [beach/park] today.",
        "The kids are playing in the [garden/yard].",
        "I saw him at the [station/airport] this morning.",
        "Our flight to [Rome/Madrid] was delayed.",
        "She studied law in [Boston/Chicago] for three years.",
        "The cat is hiding under the [bed/table].",
        "He found the old photos in the [attic/basement].",
        "Let's meet in front of the [museum/hotel] at six.",
        "The conference was held in [Vienna/Prague] last year.",
        "I left my phone on the [desk/counter].",
        "We walked along the [river/beach] after dinner.",
        "The bakery is next to the [bank/school].",
        "My sister works at the [hospital/airport].",
        "He keeps his bike in the [garage/hall].",
        "She bought fresh bread at the [market/bakery].",
        "Our cousins moved to [Canada/Australia] last spring.",
        "The keys were in the [drawer/car] all along.",
        "We watched the sunset from the [roof/hill].",
        "The wedding took place in a small [church/garden].",
        "Grandpa is taking a nap in the [bedroom/garden].",
        "The children built a snowman in the [park/yard] yesterday.",
        "There is a good restaurant near the [station/harbor].",
    ]
    rooms = ["kitchen", "bedroom", "bathroom", "garage", "basement", "attic", "office", "garden"]
    meet = ["station", "library", "museum", "park", "hotel", "cinema", "market", "gym", "church",
            "bakery", "theater", "stadium", "airport", "mall"]
    trip = ["museum", "zoo", "park", "library", "beach", "farm", "theater", "cinema"]
    near = ["station", "river", "harbor", "beach", "museum", "park", "cathedral", "castle", "bridge",
            "lake"]
    furniture = ["table", "desk", "shelf", "chair", "bed", "sofa", "floor", "counter", "piano"]
    under = ["table", "bed", "desk", "sofa", "chair", "stairs", "car"]
    left_at = ["office", "station", "gym", "library", "airport", "restaurant", "school"]
    coffee = ["Brazil", "Kenya", "Colombia", "Ethiopia", "Peru", "Vietnam", "India", "Mexico"]
    templates = [
        T("They met in {x}.", {"x": swaps(CITIES)}, 8),
        T("She lives in {x} with her family.", {"x": swaps(CITIES)}, 8),
        T("We spent a week in {x} last summer.", {"x": swaps(COUNTRIES)}, 8),
        T("He was born in {x} in 1985.", {"x": swaps(CITIES)}, 8),
        T("The train to {x} leaves at noon.", {"x": swaps(CITIES)}, 8),
        T("My aunt moved to {x} last year.", {"x": swaps(COUNTRIES)}, 8),
        T("I have never been to {x} before.", {"x": swaps(COUNTRIES)}, 8),
        T("They flew to {x} for the wedding.", {"x": swaps(CITIES)}, 8),
        T("Everyone says {x} is a beautiful city.", {"x": swaps(CITIES)}, 8),
        T("She studied in {x} for two years.", {"x": swaps(COUNTRIES)}, 8),
        T("Our hotel in {x} was very small.", {"x": swaps(CITIES)}, 6),
        T("This coffee comes from {x}.", {"x": swaps(coffee)}, 6),
        T("The keys are in the {x}.", {"x": swaps(rooms)}, 8),
        T("We found the cat in the {x} this morning.", {"x": swaps(rooms)}, 8),
        T("Let's meet at the {x} after work.", {"x": swaps(meet)}, 10),
        T("The {x} is closed on Sundays.", {"x": swaps(meet)}, 6),
        T("The children went to the {x} with their teacher.", {"x": swaps(trip)}, 8),
        T("We had dinner near the {x}.", {"x": swaps(near)}, 8),
        T("The book is on the {x}.", {"x": swaps(furniture)}, 8),
        T("The cat sleeps under the {x} every afternoon.", {"x": swaps(under)}, 8),
        T("I left my bag at the {x} yesterday.", {"x": swaps(left_at)}, 8),
    ]
    return Category("location", "semantic", hand, templates)


# --------------------------------------------------------------------------------------------
# semantic: adjective
# --------------------------------------------------------------------------------------------

NOUN_ADJ = {  # gradable adjective pairs that suit the noun
    "soup": [("hot", "cold"), ("thick", "thin"), ("salty", "spicy")],
    "coffee": [("hot", "cold"), ("strong", "weak"), ("sweet", "bitter")],
    "room": [("warm", "cold"), ("dark", "bright"), ("small", "large"), ("clean", "dirty"),
             ("quiet", "noisy")],
    "movie": [("long", "short"), ("funny", "sad"), ("good", "bad"), ("boring", "exciting")],
    "street": [("quiet", "busy"), ("narrow", "wide"), ("dark", "bright")],
    "road": [("long", "short"), ("narrow", "wide"), ("busy", "quiet")],
    "water": [("hot", "cold"), ("deep", "shallow"), ("warm", "cold")],
    "box": [("heavy", "light"), ("big", "small")],
    "bag": [("heavy", "light"), ("big", "small"), ("cheap", "expensive")],
    "test": [("easy", "hard"), ("long", "short")],
    "shirt": [("tight", "loose"), ("clean", "dirty"), ("cheap", "expensive")],
    "car": [("fast", "slow"), ("cheap", "expensive"), ("small", "big"), ("new", "old")],
    "weather": [("warm", "cold"), ("hot", "cool"), ("wet", "dry")],
    "bread": [("fresh", "dry"), ("soft", "hard")],
    "tea": [("hot", "cold"), ("sweet", "bitter"), ("strong", "weak")],
    "music": [("loud", "quiet"), ("slow", "fast")],
    "meal": [("cheap", "expensive"), ("good", "bad"), ("light", "heavy")],
    "story": [("long", "short"), ("sad", "funny")],
    "train": [("full", "empty"), ("fast", "slow"), ("late", "early")],
    "floor": [("wet", "dry"), ("clean", "dirty")],
    "river": [("wide", "narrow"), ("deep", "shallow")],
    "house": [("big", "small"), ("old", "new"), ("quiet", "noisy"), ("warm", "cold")],
    "teacher": [("strict", "kind"), ("young", "old"), ("tired", "happy")],
    "bed": [("soft", "hard"), ("small", "big")],
    "price": [("high", "low")],
    "lesson": [("long", "short"), ("easy", "difficult"), ("interesting", "boring")],
    "night": [("cold", "warm"), ("long", "short")],
    "dog": [("big", "small"), ("friendly", "nervous"), ("loud", "quiet")],
}


# pairs that read naturally after "too"
TOO_ADJ = [("shirt", "expensive", "cheap"), ("shirt", "tight", "loose"), ("car", "fast", "slow"),
           ("coffee", "sweet", "bitter"), ("coffee", "strong", "weak"), ("price", "high", "low"),
           ("soup", "thick", "thin"), ("soup", "hot", "cold"), ("movie", "long", "short"),
           ("room", "small", "large"), ("room", "dark", "bright"), ("room", "warm", "cold"),
           ("box", "heavy", "big"), ("test", "easy", "hard"), ("test", "long", "short"),
           ("water", "hot", "cold"), ("tea", "strong", "weak"), ("tea", "sweet", "bitter"),
           ("bed", "soft", "hard"), ("music", "loud", "quiet"), ("music", "slow", "fast"),
           ("road", "narrow", "wide"), ("bread", "soft", "hard"), ("lesson", "long", "short"),
           ("lesson", "easy", "difficult"), ("house", "big", "small")]


def _noun_adj(flip: bool = False) -> list[tuple[str, str]]:
    out = []
    for i, (n, pairs) in enumerate(NOUN_ADJ.items()):
        for j, (x, y) in enumerate(pairs):
            if (i + j + flip) % 2:
                x, y = y, x
            out.append((n, f"[{x}/{y}]"))
    return out


def cat_adjective() -> Category:
    hand = [
        "The soup was [hot/cold].",
        "It was a [long/short] meeting, as usual.",
        "Her new apartment is very [small/large].",
        "The exam was [easy/hard] this year.",
        "He wore a [black/white] jacket to the interview.",
        "The lake looked [calm/rough] this morning.",
        "My grandmother has a [loud/soft] voice.",
        "We took the [narrow/wide] road through the hills.",
        "The bread in this shop is always [fresh/dry].",
        "She gave a [short/long] answer to every question.",
        "The children were [quiet/noisy] during the film.",
        "This suitcase is too [heavy/light] for me.",
        "They live in a [small/big] village near the coast.",
        "The [young/old] man helped us with our bags.",
        "The tea is still [hot/warm], so be careful.",
        "It was a [sunny/cloudy] afternoon in June.",
        "I prefer [dark/milk] chocolate with my coffee.",
        "The museum was [empty/crowded] on Monday morning.",
        "His jokes are always [funny/silly].",
        "The streets were [wet/dry] after the storm.",
        "We bought a [cheap/new] sofa for the living room.",
        "The [red/green] apples are on the top shelf.",
        "Our neighbors are very [friendly/rude].",
        "That was a [happy/sad] day for the whole family.",
        "The hotel room was [clean/dirty] and cold.",
        "Her hair was [long/short] when she was a child.",
    ]
    colors = ["red", "blue", "green", "black", "white", "pink", "brown", "gray", "yellow", "purple"]
    templates = [
        T("The {p[0]} was {p[1]}.", {"p": _noun_adj()}, 20),
        T("The {p[0]} is {p[1]}.", {"p": _noun_adj(True)}, 14),
        T("I think the {p[0]} is too {p[1]}.",
          {"p": [(n, f"[{x}/{y}]" if i % 2 else f"[{y}/{x}]") for i, (n, x, y) in enumerate(TOO_ADJ)]},
          12),
        T("She said the {p[0]} was very {p[1]}.", {"p": _noun_adj()}, 12),
        T("Everyone agreed that the {p[0]} was {p[1]}.", {"p": _noun_adj(True)}, 10),
        T("The {p[0]} seemed {p[1]} to us.", {"p": _noun_adj()}, 10),
        T("She wore a {x} dress to the party.", {"x": swaps(colors)}, 8),
        T("He drove a {x} car to work.", {"x": swaps(colors)}, 6),
        T("They painted the fence {x} last summer.", {"x": swaps(colors)}, 6),
        T("I bought {x} shoes for the wedding.", {"x": swaps(colors)}, 6),
        T("We live in a {x} house near the lake.",
          {"x": swaps(["big", "small", "large", "tiny", "white", "cheap", "cozy"])}, 6),
        T("He carried the {x} box up the stairs.",
          {"x": ["[heavy/light]", "[big/small]", "[empty/full]", "[large/small]"]}, 4),
        T("She poured {x} water into the glass.", {"x": swaps(["hot", "cold", "warm"])}, 3),
        T("It was a {x} day at the beach.",
          {"x": swaps(["hot", "cold", "windy", "sunny", "cloudy", "rainy", "perfect", "long"])}, 8),
        T("She gave me a {x} smile.",
          {"x": swaps(["warm", "cold", "sad", "shy", "big", "small", "nervous", "friendly"])}, 8),
        T("The old man told a {x} story about the war.",
          {"x": swaps(["sad", "long", "short", "funny", "strange", "true"])}, 8),
        T("He lives in a {x} town by the sea.",
          {"x": swaps(["small", "quiet", "busy", "pretty", "tiny", "large"])}, 8),
        T("They stayed at a {x} hotel in the center.",
          {"x": swaps(["cheap", "nice", "small", "big", "quiet", "fancy", "noisy"])}, 8),
    ]
    return Category("adjective", "semantic", hand, templates)


# --------------------------------------------------------------------------------------------
# semantic: verb
# --------------------------------------------------------------------------------------------

OBJ_VERBS = [
    ("the door", ["opened", "closed", "locked", "painted", "fixed"]),
    ("the window", ["opened", "closed", "cleaned", "broke"]),
    ("the letter", ["wrote", "read", "sent", "signed", "burned", "opened"]),
    ("the car", ["washed", "fixed", "sold", "bought", "parked", "drove"]),
    ("the soup", ["cooked", "tasted", "heated", "ate"]),
    ("the song", ["sang", "wrote", "heard", "played"]),
    ("the ball", ["threw", "caught", "kicked", "dropped", "found"]),
    ("the cake", ["baked", "ate", "cut", "bought", "decorated"]),
    ("the book", ["read", "wrote", "bought", "lost", "found", "borrowed"]),
    ("the dishes", ["washed", "dried", "broke"]),
    ("the report", ["wrote", "read", "printed", "finished", "sent"]),
    ("the keys", ["lost", "found", "dropped", "hid"]),
]
BASE_OBJ_VERBS = [
    ("the house", ["buy", "sell", "paint", "rent", "clean"]),
    ("the window", ["open", "close", "clean"]),
    ("the car", ["wash", "fix", "sell", "park"]),
    ("dinner", ["cook", "make", "order"]),
    ("the tickets", ["buy", "print", "book", "check"]),
]


def cat_verb() -> Category:
    hand = [
        "She [opened/closed] the door.",
        "The baby [laughed/cried] all night.",
        "He [bought/sold] his car last month.",
        "I [love/hate] rainy days.",
        "They [won/lost] the final match.",
        "We [walked/drove] to the station.",
        "My brother [loves/likes] spicy food.",
        "The teacher [thanked/blamed] the whole class.",
        "Please [open/close] the window.",
        "She [pushed/pulled] the heavy door.",
        "He [remembered/forgot] her birthday again.",
        "The children [sang/danced] in the garden.",
        "Our team [accepted/rejected] the offer.",
        "They [arrived/left] early in the morning.",
        "I [found/lost] my wallet at the mall.",
    ]
    vo = []
    for obj, verbs in OBJ_VERBS:
        vo += [f"{e} {obj}" for e in swaps(verbs)]
    vo_base = []
    for obj, verbs in BASE_OBJ_VERBS:
        vo_base += [f"{e} {obj}" for e in swaps(verbs)]
    subj = ["She", "He", "My sister", "Tom", "The boy", "Anna", "Our neighbor"]
    subj_lc = ["she", "he", "my sister", "Tom", "the boy", "Anna", "our neighbor"]
    intrans = [
        ("The baby", ["laughed", "cried", "slept", "screamed", "coughed"], "all night"),
        ("The children", ["sang", "danced", "played", "laughed", "shouted"], "in the garden"),
        ("She", ["walked", "ran", "drove", "cycled"], "to the station"),
        ("He", ["smiled", "waved", "shouted", "stared", "laughed"], "at the waiter"),
        ("The dog", ["barked", "growled", "jumped"], "at the mailman"),
        ("We", ["swam", "walked", "sailed", "rowed"], "across the lake"),
        ("The old man", ["sat", "slept", "waited", "stood"], "near the fountain"),
    ]
    intr = [f"{s} {e} {tail}" for s, verbs, tail in intrans for e in swaps(verbs)]
    templates = [
        T("{s} {vo}.", {"s": subj, "vo": vo}, 24),
        T("{s} {vo} this morning.", {"s": subj, "vo": vo}, 16),
        T("After lunch, {s} {vo}.", {"s": subj_lc, "vo": vo}, 14),
        T("I think {s} {vo} yesterday.",
          {"s": ["she", "he", "my sister", "Tom", "Anna"], "vo": vo}, 12),
        T("{x}.", {"x": intr}, 24),
        T("We will {vo} tomorrow.", {"vo": vo_base}, 8),
        T("I asked him to {vo} this week.", {"vo": vo_base}, 10),
        T("{s} {x} {o}.",
          {"s": ["I", "We", "They", "Most kids", "My parents"],
           "x": ["[love/hate]", "[like/hate]", "[enjoy/avoid]", "[love/fear]"],
           "o": ["rainy days", "spicy food", "long walks", "cold weather", "loud music", "horror films"]}, 16),
        T("The kids {x} in the park all afternoon.",
          {"x": swaps(["played", "ran", "danced", "sang", "laughed", "shouted", "read", "slept"])}, 10),
        T("She loves to {x} on weekends.",
          {"x": swaps(["sing", "dance", "cook", "read", "swim", "paint", "hike", "sleep"])}, 10),
    ]
    return Category("verb", "semantic", hand, templates)


# --------------------------------------------------------------------------------------------
# semantic: number
# --------------------------------------------------------------------------------------------

def cat_number() -> Category:
    hand = [
        "She bought [three/five] apples.",
        "We stayed there for [two/three] weeks.",
        "The bus leaves in [ten/five] minutes.",
        "He read [all/half] of the book in one night.",
        "[Most/Some] of my friends live in the city.",
        "The house has [four/two] bedrooms and a garden.",
        "Our office is on the [third/second] floor.",
        "I have [two/three] cousins in Canada.",
        "She won [first/second] prize in the contest.",
        "They have [many/few] friends at school.",
        "We invited [twenty/fifty] people to the party.",
        "The film lasted [two/three] hours.",
    ]
    nums = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "twenty"]
    small = ["two", "three", "four", "five", "six"]
    ords = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
            "tenth"]
    quant = ["Most", "All", "Some", "Half", "Many", "Few", "None"]
    templates = [
        T("She bought {x} apples at the market.", {"x": swaps(nums)}, 8),
        T("There were {x} people at the meeting.", {"x": swaps(nums)}, 8),
        T("We waited {x} hours for the train.", {"x": swaps(nums)}, 8),
        T("The trip took {x} days.", {"x": swaps(nums)}, 6),
        T("My daughter is {x} years old.", {"x": swaps(nums[:-1])}, 8),
        T("The meeting starts in {x} minutes.", {"x": swaps(nums)}, 6),
        T("He has {x} brothers and one sister.", {"x": swaps(small)}, 6),
        T("I need {x} eggs for the cake.", {"x": swaps(small)}, 6),
        T("The room has {x} windows.", {"x": swaps(small)}, 6),
        T("She lives on the {x} floor.", {"x": swaps(ords)}, 8),
        T("Our team finished {x} in the league.", {"x": swaps(ords[:5])}, 6),
        T("{x} of the students passed the exam.", {"x": swaps(quant)}, 10),
        T("She ate {x} of the cake.", {"x": swaps(["all", "half", "most", "some", "none"])}, 8),
        T("We visited the museum {x} times last year.", {"x": swaps(nums[1:9])}, 6),
        T("The shop is {x} minutes from here.", {"x": swaps(nums)}, 6),
        T("They invited {x} guests to the wedding.", {"x": swaps(nums + ["fifty", "thirty"])}, 6),
        T("{x} students came to class today.", {"x": swaps(["Many", "Few", "Several", "Some"])}, 6),
        T("I have {x} friends in this town.",
          {"x": swaps(["many", "few", "no", "some", "several", "two", "three"])}, 8),
        T("It took us {x} years to finish the house.", {"x": swaps(nums)}, 6),
        T("He drinks {x} cups of coffee a day.", {"x": swaps(small)}, 6),
    ]
    return Category("number", "semantic", hand, templates)


# --------------------------------------------------------------------------------------------
# grammar: tense
# --------------------------------------------------------------------------------------------

# past, third person singular present, base form, rest of the verb phrase
TENSE_VP = [
    ("walked", "walks", "walk", "home"), ("cooked", "cooks", "cook", "dinner for us"),
    ("visited", "visits", "visit", "the museum"), ("played", "plays", "play", "tennis with friends"),
    ("cleaned", "cleans", "clean", "the kitchen"), ("watched", "watches", "watch", "a long movie"),
    ("called", "calls", "call", "the doctor"), ("painted", "paints", "paint", "the fence"),
    ("finished", "finishes", "finish", "the report"), ("missed", "misses", "miss", "the bus"),
    ("bought", "buys", "buy", "a new phone"), ("ate", "eats", "eat", "a big sandwich"),
    ("went", "goes", "go", "to the beach"), ("saw", "sees", "see", "a famous actor"),
    ("wrote", "writes", "write", "a long letter"), ("took", "takes", "take", "a taxi to work"),
    ("made", "makes", "make", "pancakes"), ("lost", "loses", "lose", "the keys"),
    ("drank", "drinks", "drink", "a cup of tea"), ("sold", "sells", "sell", "the old car"),
    ("met", "meets", "meet", "an old friend"), ("left", "leaves", "leave", "work early"),
    ("spent", "spends", "spend", "all the money"), ("started", "starts", "start", "a new book"),
    ("won", "wins", "win", "the game"), ("drove", "drives", "drive", "to the city"),
    ("fixed", "fixes", "fix", "the sink"), ("washed", "washes", "wash", "the car"),
    ("built", "builds", "build", "a sandcastle"), ("ran", "runs", "run", "five miles"),
    ("sang", "sings", "sing", "a song"), ("worked", "works", "work", "late"),
    ("told", "tells", "tell", "a funny story"), ("found", "finds", "find", "a coin"),
    ("forgot", "forgets", "forget", "the password"), ("opened", "opens", "open", "the window"),
]
SG_SUBJ = ["she", "he", "my sister", "my brother", "the teacher", "our neighbor", "Anna", "John",
           "Peter", "Maria"]
PL_SUBJ = ["they", "we", "I", "you", "my parents", "the kids", "our neighbors", "the students"]
PAST_START = ["Yesterday", "Last night", "Last week", "Last Saturday", "Two days ago",
              "Earlier today", "A week ago"]
PAST_END = ["yesterday", "last night", "two days ago", "an hour ago", "last weekend", "a week ago"]


def cat_tense() -> Category:
    hand = [
        "Yesterday she [walked/walks] home.",
        "Last night we [watched/watch] a movie.",
        "Two years ago he [moved/moves] to Chicago.",
        "She [finished/finishes] her homework an hour ago.",
        "When I was young, I [played/play] the piano.",
        "Last summer they [visited/visit] their grandparents.",
        "In 1990 my father [bought/buys] his first car.",
        "The wind [broke/breaks] the fence last night.",
        "We [met/meet] at a party three years ago.",
        "Yesterday the shop [closed/closes] early.",
        "He [lost/loses] his wallet on the bus last week.",
        "Last Monday I [forgot/forget] my umbrella at work.",
        "She [wrote/writes] the letter two days ago.",
        "Earlier today the baby [cried/cries] for an hour.",
        "A week ago my sister [started/starts] a new job.",
        "The team [won/wins] the final game last season.",
        "Last night it [snowed/snows] for hours.",
        "In 2015 they [opened/open] a small bakery.",
        "Yesterday afternoon the kids [built/build] a snowman.",
        "She [taught/teaches] in Spain many years ago.",
        "The train [left/leaves] ten minutes ago.",
        "Last weekend we [cleaned/clean] the whole house.",
        "Once upon a time, a king [lived/lives] in a castle.",
        "He [called/calls] me yesterday to say sorry.",
        "Back in 2010, she [worked/works] at a bank.",
        "Last year the tickets [were/are] much cheaper.",
        "Yesterday the weather [was/is] terrible.",
        "When we arrived last night, the door [was/is] open.",
    ]
    sg = [f"[{p}/{s}] {r}" for p, s, _, r in TENSE_VP]
    pl = [f"[{p}/{b}] {r}" for p, _, b, r in TENSE_VP if p != b]
    cop_sg = [("weather", "terrible"), ("shop", "closed"), ("traffic", "awful"), ("train", "late"),
              ("water", "cold"), ("sky", "clear"), ("museum", "empty")]
    cop_pl = [("streets", "empty"), ("tickets", "cheap"), ("roads", "icy"), ("shops", "closed"),
              ("children", "tired"), ("trains", "late")]
    years = ["1985", "1992", "1998", "2003", "2009", "2012"]
    templates = [
        T("{t} {s} {v}.", {"t": PAST_START, "s": SG_SUBJ, "v": sg}, 36),
        T("{t} {s} {v}.", {"t": PAST_START, "s": PL_SUBJ, "v": pl}, 28),
        T("{s} {v} {t}.", {"s": SG_SUBJ, "v": sg, "t": PAST_END}, 36),
        T("{s} {v} {t}.", {"s": PL_SUBJ, "v": pl, "t": PAST_END}, 28),
        T("{t} the {c[0]} [was/is] {c[1]}.", {"t": PAST_START, "c": cop_sg}, 10),
        T("{t} the {c[0]} [were/are] {c[1]}.", {"t": PAST_START, "c": cop_pl}, 8),
        T("In {y}, {s} [lived/lives] in {c}.", {"y": years, "s": SG_SUBJ, "c": CITIES}, 8),
        T("In {y}, {s} [lived/live] in {c}.", {"y": years, "s": PL_SUBJ, "c": CITIES}, 6),
        T("When {s[0]} was a child, {s[1]} {v} every summer.",
          {"s": [("my father", "he"), ("my mother", "she"), ("Anna", "she"), ("John", "he"),
                 ("our teacher", "she")],
           "v": ["[went/goes] to the lake", "[spent/spends] a month abroad", "[played/plays] by the river",
                 "[stayed/stays] at a farm", "[worked/works] on a farm"]}, 8),
    ]
    return Category("tense", "grammar", hand, templates)


# --------------------------------------------------------------------------------------------
# grammar: article
# --------------------------------------------------------------------------------------------

def _art(vowel: list[str], cons: list[str], start: bool = False) -> list[str]:
    """a/an edits: ``[an/a] apple`` for vowel sounds, ``[a/an] car`` for consonant sounds."""
    an, a = ("An", "A") if start else ("an", "a")
    return [f"[{an}/{a}] {w}" for w in vowel] + [f"[{a}/{an}] {w}" for w in cons]


def cat_article() -> Category:
    hand = [
        "She ate [an/a] apple.",
        "He is [an/a] honest man.",
        "We waited for [an/a] hour at the station.",
        "She works as [an/a] engineer in Boston.",
        "I have [an/a] idea for the party.",
        "They live on [an/a] island near Greece.",
        "He bought [a/an] car last week.",
        "It was [a/an] long day.",
        "My uncle is [a/an] doctor.",
        "She goes to [a/an] university in Ohio.",
        "There is [an/a] elephant at the zoo.",
        "He gave me [an/a] orange and a banana.",
        "We saw [an/a] owl in the garden last night.",
        "This is [a/an] useful tool.",
        "She wore [a/an] uniform to school.",
        "He sent me [an/a] email yesterday.",
        "It is [an/a] old house with a red roof.",
        "I need [an/a] umbrella today.",
        "That was [an/a] easy question.",
        "She is [a/an] European citizen.",
        "They adopted [a/an] dog from the shelter.",
        "He told us [a/an] funny story.",
        "I read [an/a] article about whales.",
        "He is [an/a] only child.",
        "She drew [a/an] picture of her cat.",
        "There was [an/a] accident on the highway.",
        "It was [an/a] honor to meet you.",
        "[An/A] apple a day keeps the doctor away.",
        "We need [a/an] new plan for the weekend.",
        "My brother has [an/a] interview tomorrow.",
    ]
    v_food = ["apple", "orange", "egg", "onion", "avocado", "apricot", "olive"]
    c_food = ["banana", "pear", "peach", "sandwich", "cookie", "carrot", "potato", "lemon"]
    v_zoo = ["elephant", "owl", "eagle", "octopus", "ostrich", "iguana"]
    c_zoo = ["lion", "tiger", "bear", "snake", "giraffe", "zebra", "monkey"]
    v_pic = v_zoo + ["ant", "insect"]
    c_pic = c_zoo + ["dog", "cat", "horse", "bird", "rabbit", "fox", "spider"]
    v_job = ["engineer", "artist", "actor", "architect", "editor", "officer", "accountant", "author",
             "astronaut", "electrician", "economist", "interpreter", "instructor"]
    c_job = ["doctor", "teacher", "nurse", "lawyer", "pilot", "writer", "baker", "farmer", "dentist",
             "chef", "plumber", "journalist", "musician", "cook"]
    day_v = ["easy", "awful", "amazing", "ordinary", "unusual", "exhausting", "odd", "interesting"]
    day_c = ["long", "busy", "great", "nice", "hard", "strange", "quiet", "lovely", "perfect"]
    q_v = ["easy", "odd", "interesting", "important", "honest", "obvious", "excellent", "unfair"]
    q_c = ["good", "hard", "simple", "strange", "silly", "difficult", "fair", "tricky"]
    h_v = ["old", "empty", "ugly", "expensive", "enormous", "elegant"]
    h_c = ["big", "small", "nice", "new", "quiet", "cheap", "modern", "lovely"]
    m_v = ["old", "interesting", "awful", "amazing", "excellent", "exciting", "odd"]
    m_c = ["good", "bad", "long", "short", "funny", "sad", "boring", "scary"]
    man_v = ["honest", "old", "angry", "elderly", "unusual", "important"]
    man_c = ["kind", "young", "tall", "happy", "busy", "useful", "unique", "humble"]
    templates = [
        T("She ate {x} for lunch.", {"x": _art(v_food, c_food)}, 10),
        T("He bought {x} at the market.", {"x": _art(v_food, c_food)}, 8),
        T("{x} fell from the tree.",
          {"x": _art(["apple", "orange", "apricot", "acorn", "olive"],
                     ["pear", "peach", "lemon", "coconut", "branch"], start=True)}, 10),
        T("There is {x} in the picture.", {"x": _art(v_pic, c_pic)}, 10),
        T("We saw {x} at the zoo yesterday.", {"x": _art(v_zoo, c_zoo)}, 10),
        T("{x} was sitting on the fence.",
          {"x": _art(["owl", "eagle", "insect", "old cat"], ["bird", "cat", "crow", "squirrel"],
                     start=True)}, 8),
        T("My {r} is {x}.", {"r": ["uncle", "aunt", "cousin", "neighbor", "sister", "brother"],
                             "x": _art(v_job, c_job)}, 12),
        T("She wants to become {x} one day.", {"x": _art(v_job, c_job)}, 10),
        T("He worked as {x} for ten years.", {"x": _art(v_job, c_job)}, 10),
        T("It was {x} day at work.", {"x": _art(day_v, day_c)}, 10),
        T("That was {x} question.", {"x": _art(q_v, q_c)}, 8),
        T("The teacher asked {x} question about the war.", {"x": _art(q_v, q_c)}, 6),
        T("They bought {x} house near the park.", {"x": _art(h_v, h_c)}, 10),
        T("We watched {x} movie last night.", {"x": _art(m_v, m_c)}, 10),
        T("He seems like {x} person.", {"x": _art(man_v, man_c)}, 10),
        T("This is {x} tool for the garden.",
          {"x": _art(["excellent", "old", "expensive", "important"],
                     ["useful", "cheap", "simple", "small", "handy"])}, 8),
        T("She studied at {x} in Boston.",
          {"x": _art(["art school", "old university", "excellent college"],
                     ["university", "college", "small college", "music school"])}, 7),
        T("We waited for {x} at the station.",
          {"x": _art(["hour", "entire hour", "extra hour"], ["minute", "while", "long time"])}, 6),
        T("She gave {x} speech at the wedding.",
          {"x": _art(["emotional", "amazing", "awkward"], ["short", "funny", "long", "lovely"])}, 7),
        T("He wore {x} to school.",
          {"x": _art(["old coat", "orange shirt"], ["uniform", "jacket", "hat", "tie", "sweater"])}, 7),
        T("She is {x} citizen.",
          {"x": _art(["American", "Italian", "Indian", "Irish", "Australian"],
                     ["European", "French", "German", "Canadian", "Spanish"])}, 8),
    ]
    return Category("article", "grammar", hand, templates)


# --------------------------------------------------------------------------------------------
# grammar: preposition
# --------------------------------------------------------------------------------------------

ADJ_PREP = [  # adjective, correct preposition, wrong preposition, objects
    ("afraid", "of", "from", ["spiders", "the dark", "dogs", "heights", "snakes", "thunder"]),
    ("proud", "of", "on", ["her son", "the team", "their garden", "his students"]),
    ("interested", "in", "on", ["history", "music", "politics", "art", "science", "old cars"]),
    ("fond", "of", "on", ["old films", "jazz", "cats", "long walks"]),
    ("good", "at", "of", ["math", "chess", "tennis", "cooking", "drawing"]),
    ("responsible", "for", "of", ["the budget", "the kitchen", "the children", "the website"]),
    ("aware", "of", "on", ["the risks", "the problem", "the new rules"]),
    ("married", "to", "of", ["a doctor", "a pilot", "an artist", "a teacher"]),
    ("keen", "on", "of", ["tennis", "gardening", "jazz"]),
    ("tired", "of", "on", ["waiting", "the noise", "the rain"]),
    ("jealous", "of", "on", ["his brother", "her sister", "their success"]),
    ("capable", "of", "for", ["great things", "hard work"]),
    ("excited", "about", "of", ["the trip", "the party", "the new job"]),
    ("worried", "about", "on", ["the exam", "her father", "the weather"]),
]
VERB_PREP = [  # a frame with {x} for the preposition edit, objects
    ("The plan depends {x} {o}.", "on", "of", ["the weather", "the budget", "your help"]),
    ("This house belongs {x} {o}.", "to", "of", ["my uncle", "the city", "an old couple"]),
    ("She listened {x} {o} carefully.", "to", "of", ["the radio", "the teacher", "his story"]),
    ("We waited {x} {o} for an hour.", "for", "of", ["the bus", "the doctor", "the train",
                                                       "our friends"]),
    ("He apologized {x} {o}.", "for", "of", ["the mistake", "being late", "the noise"]),
    ("They insisted {x} {o}.", "on", "of", ["paying the bill", "seeing the manager", "an apology"]),
    ("I always rely {x} {o}.", "on", "of", ["my sister", "this car", "my notes"]),
    ("Everyone laughed {x} {o}.", "at", "of", ["the joke", "his hat", "the clown"]),
    ("The team consists {x} {o}.", "of", "on", ["five players", "three engineers", "old friends"]),
    ("She believes {x} {o}.", "in", "at", ["ghosts", "hard work", "her students"]),
    ("I completely agree {x} {o}.", "with", "of", ["you", "my father", "the teacher"]),
    ("He thanked us {x} {o}.", "for", "of", ["the gift", "our help", "the lovely dinner"]),
    ("The kids are looking {x} {o}.", "at", "of", ["the stars", "the map", "the pictures"]),
    ("She took care {x} {o} all week.", "of", "for", ["the baby", "the garden", "her grandmother"]),
]


def cat_preposition() -> Category:
    hand = [
        "She is good [at/of] math.",
        "It depends [on/of] the weather.",
        "He is afraid [of/from] spiders.",
        "I am interested [in/on] history.",
        "She was born [in/on] 1990.",
        "The meeting is [on/in] Monday.",
        "I will call you [at/in] noon.",
        "They are proud [of/on] their daughter.",
        "He is married [to/of] a nurse.",
        "She is responsible [for/of] the budget.",
        "This bag is different [from/of] mine.",
        "The box was full [of/in] old letters.",
        "We listened [to/of] the radio all evening.",
        "She laughed [at/of] his joke.",
        "He apologized [for/of] being late.",
        "The house belongs [to/of] my uncle.",
        "She is fond [of/on] old films.",
        "We waited [for/of] the bus for an hour.",
        "The cake consists [of/on] three layers.",
        "The town is famous [for/of] its cheese.",
        "She insisted [on/of] paying the bill.",
        "My birthday is [in/on] July.",
        "The store opens [at/on] nine o'clock.",
        "According [to/of] the report, sales fell.",
        "Thank you [for/of] the lovely flowers.",
        "I'm not aware [of/on] any problems.",
        "She stayed [at/in] home all day.",
        "We usually go skiing [in/on] winter.",
        "I often read [at/in] night.",
        "The children were excited [about/of] the trip.",
    ]
    adj = [f"{a} [{c}/{w}] {o}" for a, c, w, objs in ADJ_PREP for o in objs]
    subj_be = ["She is", "He was", "My sister is", "Our neighbor is", "Anna is", "Tom was"]
    verb_frames = [f.format(x=f"[{c}/{w}]", o=o) for f, c, w, objs in VERB_PREP for o in objs]
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    months = ["January", "March", "April", "May", "June", "July", "August", "October", "December"]
    years = ["1990", "1985", "2001", "2010", "1978", "2016"]
    clock = ["[at/on] nine o'clock", "[at/in] noon", "[at/in] midnight", "[at/on] six o'clock",
             "[at/in] seven thirty"]
    templates = [
        T("{s} {a}.", {"s": subj_be, "a": adj}, 30),
        T("I think {s} {a}.", {"s": ["she is", "he is", "my sister is", "Tom is"], "a": adj}, 14),
        T("Since childhood, {s} has been {a}.",
          {"s": ["she", "he", "Anna", "my brother"],
           "a": [x for x in adj if not x.startswith(("married", "excited", "worried"))]}, 10),
        T("{x}", {"x": verb_frames}, 30),
        T("The meeting is [on/in] {d}.", {"d": days}, 4),
        T("[On/In] {d} we went to the zoo.", {"d": days}, 4),
        T("The museum is closed [on/in] {d}s.", {"d": days}, 4),
        T("We have a test [on/in] {d} morning.", {"d": days}, 4),
        T("{s} was born [in/on] {y}.", {"s": ["She", "He", "My father", "Our teacher"],
                                        "y": years}, 6),
        T("They moved to {c} [in/on] {m}.", {"c": CITIES, "m": months}, 6),
        T("My birthday is [in/on] {m}.", {"m": months}, 4),
        T("[In/On] {m} the weather is usually nice.", {"m": months}, 4),
        T("The {e} starts {t}.", {"e": ["concert", "film", "party", "meeting", "show"], "t": clock}, 8),
        T("We usually go to the beach [in/on] {s}.", {"s": ["summer", "July", "August"]}, 3),
        T("She always calls me [in/at] the {p}.", {"p": ["morning", "afternoon", "evening"]}, 3),
    ]
    return Category("preposition", "grammar", hand, templates)


# --------------------------------------------------------------------------------------------
# grammar: subject-verb agreement
# --------------------------------------------------------------------------------------------

HUMAN_SG = ["boy", "girl", "teacher", "student", "doctor", "farmer", "woman", "man"]
HUMAN_PL = ["boys", "girls", "teachers", "students", "doctors", "farmers", "women", "men"]
HUMAN_VP = [("likes", "like", "chocolate cake"), ("lives", "live", "near the park"),
            ("works", "work", "very hard"), ("plays", "play", "the guitar"),
            ("wants", "want", "a glass of water"), ("knows", "know", "the answer"),
            ("speaks", "speak", "French at home"), ("walks", "walk", "to work every day"),
            ("needs", "need", "more time"), ("sings", "sing", "in the shower"),
            ("drinks", "drink", "coffee every morning"), ("eats", "eat", "lunch at noon")]
ANIMAL_SG = ["dog", "cat", "horse", "rabbit"]
ANIMAL_PL = ["dogs", "cats", "horses", "rabbits"]
ANIMAL_VP = [("sits", "sit", "by the door"), ("runs", "run", "across the field"),
             ("eats", "eat", "twice a day"), ("loves", "love", "the snow"),
             ("likes", "like", "the garden")]


def cat_subject_verb_agreement() -> Category:
    hand = [
        "The dogs [run/runs] around the yard every morning.",
        "The key to the cabinets [is/are] on the table.",
        "My parents [live/lives] in a small town.",
        "She [works/work] at the bank on Main Street.",
        "The man who lives next door [owns/own] a boat.",
        "Each of the students [has/have] a locker.",
        "The books on the shelf [are/is] very old.",
        "Every child [needs/need] a warm coat in winter.",
        "The flowers in the garden [smell/smells] lovely.",
        "He [speaks/speak] three languages fluently.",
        "The children [love/loves] the new playground.",
        "The girl with the red shoes [likes/like] chocolate cake.",
        "Our teacher [gives/give] us too much homework.",
        "The pictures on the wall [were/was] painted by my aunt.",
        "Tom and Anna [play/plays] tennis every weekend.",
        "This soup [tastes/taste] a bit salty.",
        "The students in the back row [talk/talks] too much.",
        "My brother always [loses/lose] his keys.",
    ]
    hsg = [f"[{s}/{b}] {r}" for s, b, r in HUMAN_VP]
    hpl = [f"[{b}/{s}] {r}" for s, b, r in HUMAN_VP]
    asg = [f"[{s}/{b}] {r}" for s, b, r in ANIMAL_VP]
    apl = [f"[{b}/{s}] {r}" for s, b, r in ANIMAL_VP]
    pp_pl = ["with the red shoes", "from the islands", "with two dogs", "with the long braids"]
    pp_sg = ["in the photo", "from the village", "with the red car", "from the big house"]
    rel_sg = ["who lives next door", "who sits by the window", "who called yesterday"]
    rel_pl = ["who live next door", "who sit by the window", "who called yesterday"]
    things = [("book", "books", "old"), ("key", "keys", "on the table"), ("box", "boxes", "heavy"),
              ("letter", "letters", "from my aunt"), ("phone", "phones", "new"),
              ("shoe", "shoes", "too small"), ("picture", "pictures", "beautiful")]
    tastes = [("apple", "apples", "sweet"), ("cake", "cakes", "delicious"),
              ("cookie", "cookies", "good"), ("candle", "candles", "nice")]
    templates = [
        T("The {n} {v}.", {"n": HUMAN_SG, "v": hsg}, 14),
        T("The {n} {v}.", {"n": HUMAN_PL, "v": hpl}, 14),
        T("The {n} {v}.", {"n": ANIMAL_SG, "v": asg}, 8),
        T("The {n} {v}.", {"n": ANIMAL_PL, "v": apl}, 8),
        T("The {n} {pp} {v}.", {"n": HUMAN_SG, "pp": pp_pl, "v": hsg}, 14),
        T("The {n} {pp} {v}.", {"n": HUMAN_PL, "pp": pp_sg, "v": hpl}, 14),
        T("The {n} {r} {v}.", {"n": ["man", "woman", "girl", "boy"], "r": rel_sg, "v": hsg}, 10),
        T("The {n} {r} {v}.", {"n": ["men", "women", "girls", "boys"], "r": rel_pl, "v": hpl}, 10),
        T("{p} {v}.", {"p": ["She", "He"], "v": hsg}, 10),
        T("{p} {v}.", {"p": ["They", "We", "I", "You"], "v": hpl}, 10),
        T("{p} {v}.", {"p": ["Anna", "My brother", "Our neighbor", "Tom"], "v": hsg}, 10),
        T("The {t[0]} [is/are] {t[1]}.", {"t": [(s, r) for s, _, r in things]}, 7),
        T("The {t[0]} [are/is] {t[1]}.", {"t": [(p, r) for _, p, r in things]}, 7),
        T("The {t[0]} [tastes/taste] {t[1]}.", {"t": [(s, r) for s, _, r in tastes[:3]]}, 3),
        T("The {t[0]} [taste/tastes] {t[1]}.", {"t": [(p, r) for _, p, r in tastes[:3]]}, 3),
        T("Every {n} {v}.", {"n": ["student", "child", "player", "guest"],
                             "v": ["[needs/need] a ticket", "[wants/want] a turn",
                                   "[gets/get] a free drink", "[has/have] a name tag"]}, 8),
        T("Each of the {n[0]} [has/have] {n[1]}.",
          {"n": [("students", "a locker"), ("rooms", "a window"), ("houses", "a small garden"),
                 ("players", "a number")]}, 4),
    ]
    return Category("subject_verb_agreement", "grammar", hand, templates)


# --------------------------------------------------------------------------------------------
# grammar: determiner-noun number
# --------------------------------------------------------------------------------------------

DET_NOUNS = [("book", "books", "old"), ("car", "cars", "fast"),
             ("apple", "apples", "fresh"), ("chair", "chairs", "comfortable"), ("coat", "coats", "warm"),
             ("flower", "flowers", "beautiful"), ("house", "houses", "expensive"),
             ("song", "songs", "popular"), ("cup", "cups", "dirty"), ("room", "rooms", "small"),
             ("picture", "pictures", "lovely"), ("question", "questions", "difficult"),
             ("cookie", "cookies", "delicious"), ("dog", "dogs", "friendly"),
             ("road", "roads", "dangerous")]
OBJECTS = [("book", "books"), ("coat", "coats"), ("chair", "chairs"), ("cup", "cups"),
           ("plate", "plates"), ("box", "boxes"), ("bag", "bags"), ("lamp", "lamps"), ("hat", "hats"),
           ("picture", "pictures")]


def cat_determiner_number() -> Category:
    hand = [
        "[These/This] books are old.",
        "[This/These] coat is too big for me.",
        "She bought [those/that] shoes last week.",
        "[Many/Much] people came to the party.",
        "We don't have [much/many] time left.",
        "There are [many/much] bridges in this city.",
        "He has [two/one] sisters and a brother.",
        "[Every/All] student has a locker.",
        "[Each/Both] child got a small gift.",
        "Please wash [these/this] cups before dinner.",
        "I really like [this/these] song.",
        "[Those/That] houses by the river are expensive.",
        "There isn't [much/many] milk in the fridge.",
        "She ate too [many/much] cookies after dinner.",
        "[Both/Each] girls won a prize.",
        "He drank too [much/many] coffee last night.",
        "We need [two/one] more chairs for the guests.",
        "I love [this/these] old photo of you.",
    ]
    mass = ["time", "money", "milk", "bread", "sugar", "coffee", "rice", "space"]
    many_pl = ["friends", "books", "cousins", "toys", "ideas", "questions"]
    city_pl = ["parks", "museums", "bridges", "tourists", "churches", "cars", "trees"]
    templates = [
        T("[These/This] {n[1]} are {n[2]}.", {"n": DET_NOUNS}, 10),
        T("[This/These] {n[0]} is {n[2]}.", {"n": DET_NOUNS}, 10),
        T("[That/Those] {n[0]} was {n[2]}.", {"n": DET_NOUNS}, 8),
        T("I think [these/this] {n[1]} are {n[2]}.", {"n": DET_NOUNS}, 8),
        T("I bought [these/this] {o[1]} {w}.", {"o": OBJECTS, "w": ["yesterday", "last week",
                                                                      "at the market"]}, 8),
        T("I bought [this/these] {o[0]} {w}.", {"o": OBJECTS, "w": ["yesterday", "last week",
                                                                      "at the market"]}, 8),
        T("She found [those/that] {o[1]} in the attic.", {"o": OBJECTS}, 8),
        T("She found [that/those] {o[0]} in the attic.", {"o": OBJECTS}, 8),
        T("Please put [these/this] {o[1]} on the shelf.", {"o": OBJECTS}, 6),
        T("{s} has [many/much] {n}.", {"s": ["She", "He", "My sister", "Tom"], "n": many_pl}, 8),
        T("There are [many/much] {n} in this city.", {"n": city_pl}, 6),
        T("[Many/Much] {n} came to the party.", {"n": ["people", "guests", "friends", "students",
                                                        "neighbors"]}, 5),
        T("We don't have [much/many] {m} left.", {"m": mass}, 6),
        T("There isn't [much/many] {m} in the fridge.",
          {"m": ["milk", "cheese", "butter", "juice", "food"]}, 5),
        T("He drank too [much/many] {m} last night.", {"m": ["coffee", "wine", "water", "soda"]}, 4),
        T("She ate too [many/much] {n} at the party.",
          {"n": ["cookies", "sweets", "apples", "chips", "sandwiches"]}, 5),
        T("{s} has [{k}/one] {n}.",
          {"s": ["She", "He", "My aunt"], "k": ["two", "three", "four"],
           "n": ["brothers", "sisters", "cats", "dogs", "kids"]}, 8),
        T("{s} has [one/{k}] {n}.",
          {"s": ["She", "He", "My aunt"], "k": ["two", "three", "four"],
           "n": ["brother", "sister", "cat", "dog", "car"]}, 8),
        T("I ate [{k}/one] {n} for breakfast.",
          {"k": ["two", "three"], "n": ["eggs", "pancakes", "bananas", "apples"]}, 5),
        T("[Every/All] {n} {v}.",
          {"n": ["student", "child", "player", "guest", "worker"],
           "v": ["has a number", "gets a card", "needs a key"]}, 8),
        T("[Each/Both] {n} {v}.",
          {"n": ["student", "child", "player", "guest", "worker"],
           "v": ["has a number", "gets a card", "needs a key"]}, 5),
        T("[All/Every] {n} {v}.",
          {"n": ["students", "children", "players", "guests", "workers"],
           "v": ["have a number", "get a card", "need a key"]}, 6),
        T("[Both/Each] {n} were late.", {"n": ["girls", "boys", "trains", "buses", "teachers"]}, 4),
    ]
    return Category("determiner_number", "grammar", hand, templates)


# --------------------------------------------------------------------------------------------
# grammar: pronoun case
# --------------------------------------------------------------------------------------------

OBJ_WRONG = [("him", "he"), ("her", "she"), ("them", "they"), ("me", "I"), ("us", "we")]
SUBJ_WRONG = [("She", "Her"), ("He", "Him"), ("They", "Them"), ("We", "Us"), ("I", "Me")]


def cat_pronoun_case() -> Category:
    hand = [
        "They saw [him/he] there.",
        "[She/Her] works at the bank.",
        "My mother called [me/I] yesterday.",
        "We invited [them/they] to dinner.",
        "He helped [us/we] with the boxes.",
        "I met [her/she] at the party.",
        "I know [they/them] live next door.",
        "[We/Us] left early because of the rain.",
        "This gift is for [him/he].",
        "I think [she/her] is right.",
        "Come with [us/we] to the park.",
        "She sat next to [me/I] on the bus.",
        "[She/Her] is my best friend.",
        "I know [they/them] are busy today.",
        "The teacher gave [them/they] extra homework.",
        "When [we/us] arrived, the party had started.",
        "[I/Me] forgot my keys at the office.",
        "Everyone was waiting for [us/we] outside.",
        "The dog followed [me/I] all the way home.",
        "After the game, [he/him] went straight to bed.",
        "We told [him/he] the truth.",
        "Nobody believed [her/she] at first.",
        "[She/Her] runs a small shop with her sister.",
        "Please send [me/I] the photos tomorrow.",
        "The manager thanked [us/we] for our help.",
    ]
    subj = ["My mother", "The teacher", "Our neighbors", "Everyone", "Anna", "Tom", "The manager"]
    verb_tails = ["saw {x} there", "saw {x} at the party", "called {x} yesterday", "called {x} twice",
                  "invited {x} to dinner", "invited {x} to the wedding", "helped {x} yesterday",
                  "helped {x} with the boxes", "met {x} at the party", "met {x} after school",
                  "thanked {x} for the gift", "thanked {x} again", "visited {x} last week",
                  "visited {x} in the hospital", "followed {x} home", "warned {x} about the storm",
                  "paid {x} for the work", "asked {x} for help", "hugged {x} at the airport",
                  "found {x} in the garden", "picked {x} up from school", "drove {x} to the station"]
    obj = [f"[{o}/{w}]" for o, w in OBJ_WRONG]
    sub = [f"[{o}/{w}]" for o, w in SUBJ_WRONG]
    sub_lc = [f"[{lower1(o)}/{lower1(w)}]" for o, w in SUBJ_WRONG]
    past_vp = ["left early today", "bought a new car", "missed the last train", "found the keys",
               "won the race", "moved to Boston", "cooked dinner for everyone", "took the bus home"]
    prep_frames = [("Anna danced with", "all evening"), ("The gift was from", ""),
                   ("The teacher smiled at", ""), ("She waited for", "outside"),
                   ("He sat next to", "at dinner"), ("They talked about", "for hours"),
                   ("My dad worried about", "all night"), ("The dog ran toward", ""),
                   ("The letter was addressed to", ""), ("Nobody wanted to play with", "today")]
    prep = [f"{p} {{x}} {t}".strip() for p, t in prep_frames]
    templates = [
        T("{s} {v}.", {"s": subj, "v": [v.replace("{x}", x) for v in verb_tails for x in obj]}, 40),
        T("{x} {v}.", {"x": [x for x in sub if "Him" not in x and "Them" not in x], "v": past_vp}, 16),
        T("I think {x} {v}.", {"x": sub_lc, "v": past_vp}, 12),
        T("Everyone knows {x} {v}.", {"x": sub_lc, "v": past_vp}, 10),
        T("My mother said {x} {v}.", {"x": sub_lc, "v": past_vp}, 8),
        T("When {x} arrived, {r}.", {"x": sub_lc, "r": ["the party started", "it was raining",
                                                        "the shop was closed"]}, 8),
        T("{f}.", {"f": [p.replace("{x}", x) for p in prep for x in obj]}, 28),
        T("Before {x} left, {r}.", {"x": sub_lc, "r": ["we had lunch", "the phone rang",
                                                       "it started to snow"]}, 6),
        T("The teacher gave {x} {o}.", {"x": obj, "o": ["a good grade", "extra homework",
                                                         "a second chance"]}, 8),
        T("{s} told {x} {o}.", {"s": ["My sister", "The doctor", "Tom"], "x": obj,
                                "o": ["a secret", "the good news", "a long story"]}, 8),
    ]
    return Category("pronoun_case", "grammar", hand, templates)


# --------------------------------------------------------------------------------------------
# grammar: auxiliary
# --------------------------------------------------------------------------------------------

AUX_SG = ["She", "He", "My brother", "The teacher", "Anna", "Our neighbor"]
AUX_PL = ["They", "We", "My parents", "The kids", "The students", "Our neighbors"]
PP_VP = ["eaten lunch", "finished the report", "lost the keys", "seen that movie",
         "moved to Boston", "forgotten the password", "visited Rome twice", "written a letter",
         "left already", "booked the tickets"]
ING_VP = ["reading a book", "cooking dinner", "sleeping upstairs", "waiting outside",
          "working late", "cleaning the kitchen", "talking on the phone", "watching a film"]
NEG_VP = ["like cold weather", "eat meat", "drink coffee", "know the answer", "want to go",
          "live here anymore", "work on Sundays"]
PERFECT_PASSIVE = [("letter", "sent"), ("car", "repaired"), ("window", "fixed"), ("ticket", "sold"),
                   ("room", "cleaned"), ("cake", "eaten"), ("bill", "paid")]
PASSIVE = [("letter", "letters", "sent yesterday"), ("car", "cars", "repaired last week"),
           ("window", "windows", "broken during the storm"), ("cake", "cakes", "made by my aunt"),
           ("house", "houses", "built in 1920"), ("road", "roads", "closed for repairs"),
           ("book", "books", "written in French"), ("photo", "photos", "taken in Paris")]


def cat_auxiliary() -> Category:
    hand = [
        "She [has/have] already eaten.",
        "They [have/has] already left.",
        "He [is/are] reading in the garden.",
        "We [were/was] sleeping when the phone rang.",
        "She [does/do] not like horror films.",
        "I [am/is] waiting for the bus.",
        "The letters [were/was] sent last week.",
        "My parents [have/has] never been to Asia.",
        "It [has/have] been raining all day.",
        "The children [are/is] playing outside.",
        "You [were/was] talking too loudly.",
        "He [doesn't/don't] eat meat.",
        "The car [was/were] repaired yesterday.",
        "I [have/has] lived here for years.",
        "Our neighbors [are/is] moving to Spain.",
        "The baby [has/have] finally fallen asleep.",
        "She [was/were] driving when it started to snow.",
        "They [do/does] not know the answer.",
    ]
    templates = [
        T("{s} [has/have] {v}.", {"s": AUX_SG, "v": PP_VP}, 12),
        T("{s} [have/has] {v}.", {"s": AUX_PL + ["I", "You"], "v": PP_VP}, 12),
        T("{s} [is/are] {v} right now.", {"s": AUX_SG, "v": ING_VP}, 10),
        T("{s} [are/is] {v} right now.", {"s": AUX_PL + ["You"], "v": ING_VP}, 10),
        T("I [am/is] {v} at the moment.", {"v": ING_VP}, 4),
        T("Right now I [am/are] {v}.", {"v": ING_VP}, 4),
        T("{s} [was/were] {v} when the phone rang.", {"s": AUX_SG + ["I"], "v": ING_VP}, 10),
        T("{s} [were/was] {v} when the phone rang.", {"s": AUX_PL + ["You"], "v": ING_VP}, 10),
        T("{s} [does/do] not {v}.", {"s": AUX_SG, "v": NEG_VP}, 10),
        T("{s} [do/does] not {v}.", {"s": AUX_PL + ["I", "You"], "v": NEG_VP}, 10),
        T("{s} [doesn't/don't] {v}.", {"s": AUX_SG, "v": NEG_VP}, 6),
        T("The {p[0]} [was/were] {p[2]}.", {"p": PASSIVE}, 8),
        T("The {p[1]} [were/was] {p[2]}.", {"p": PASSIVE}, 8),
        T("The {p[0]} [has/have] already been {p[1]}.", {"p": PERFECT_PASSIVE}, 5),
        T("The {p[0]} [have/has] already been {p[1]}.", {"p": [(n + "s", v) for n, v in PERFECT_PASSIVE]}, 5),
        T("Since Monday, {s} [has/have] worked from home.",
          {"s": ["she", "he", "my brother", "the teacher", "Anna"]}, 5),
        T("Since Monday, {s} [have/has] worked from home.",
          {"s": ["they", "we", "my parents", "the students"]}, 4),
        T("I think {s} [is/are] {v} now.", {"s": ["she", "he", "Anna"], "v": ING_VP}, 6),
        T("I think {s} [are/is] {v} now.", {"s": ["they", "the kids", "my parents"], "v": ING_VP}, 6),
    ]
    return Category("auxiliary", "grammar", hand, templates)


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------

CATEGORY_BUILDERS = [cat_subject, cat_location, cat_adjective, cat_tense, cat_article,
                     cat_preposition, cat_subject_verb_agreement, cat_determiner_number,
                     cat_pronoun_case, cat_auxiliary, cat_verb, cat_number]


def categories() -> list[Category]:
    return [f() for f in CATEGORY_BUILDERS]


_A_AN = re.compile(r"\b(an?)\s+([A-Za-z]+)", re.IGNORECASE)
_CONSONANT_SOUND = ("uni", "use", "usu", "eu", "one", "once", "uk")
_VOWEL_SOUND = ("hour", "honest", "honor", "heir")


def a_an_ok(sentence: str) -> bool:
    """Does every a/an in ``sentence`` fit the sound of the next word? (a simple spelling rule)"""
    for art, word in _A_AN.findall(sentence):
        w = word.lower()
        vowel = (w[0] in "aeiou" and not w.startswith(_CONSONANT_SOUND)) or w.startswith(_VOWEL_SOUND)
        if vowel != (art.lower() == "an"):
            return False
    return True


def candidates(cat: Category) -> list[tuple[str, str, str]]:
    """(a, b, origin) for every hand-written and template pair, in a fixed order."""
    out = [(*split_edit(h), "hand") for h in cat.hand]
    for i, t in enumerate(cat.templates):
        out += [(*split_edit(s), f"template {i}") for s in expand(cat.name, i, t)]
    return out


def build_category(cat: Category, tokenizer) -> tuple[list[dict], dict]:
    """Check and deduplicate one category. Returns the rows to write and a report."""
    rows, seen = [], set()
    dropped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    n_hand_kept = 0
    cands = candidates(cat)
    for a, b, origin in cands:
        key = (a, b) if cat.type == "grammar" else tuple(sorted((a, b)))
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        # a/an must be right everywhere except in the wrong side of an article pair
        if not a_an_ok(a) or (cat.name != "article" and not a_an_ok(b)):
            dropped["a_an_mismatch"] += 1
            examples.setdefault("a_an_mismatch", []).append(f"[{origin}] {a!r} / {b!r}")
            continue
        if not all(MIN_WORDS <= len(x.split()) <= MAX_WORDS for x in (a, b)):
            dropped["word_count"] += 1
            examples.setdefault("word_count", []).append(f"[{origin}] {a!r} / {b!r}")
            continue
        v = check_pair(tokenizer, a, b)
        if not v.ok:
            dropped[v.reason] += 1
            examples.setdefault(v.reason, [])
            if len(examples[v.reason]) < 3 or origin == "hand":
                examples[v.reason].append(f"[{origin}] {a!r} / {b!r}: {v.detail}")
            continue
        n_hand_kept += origin == "hand"
        rows.append({"pair_id": f"{cat.name}-{len(rows) + 1:04d}", "a": a, "b": b,
                     "category": cat.name, "type": cat.type})
    report = {"generated": len(cands), "kept": len(rows), "hand": len(cat.hand),
              "hand_kept": n_hand_kept, "dropped": dict(dropped), "examples": examples}
    return rows, report


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def load_default_tokenizer():
    from omegaconf import OmegaConf

    from interp.model import load_tokenizer

    return load_tokenizer(OmegaConf.load(MODEL_CONF))


def _bank_alts():
    """``scripts/bank_alts.py`` (the rule that gives a pair its grammatical ``alt``), loaded by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bank_alts", Path(__file__).with_name("bank_alts.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(out_dir: str | Path = BANK_DIR, tokenizer=None, verbose: bool = True,
         examples: bool = True) -> dict:
    """Write one ``<category>.jsonl`` per category into ``out_dir``; returns the per-category report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = load_default_tokenizer()
    reports = {}
    alts = _bank_alts()
    for cat in categories():
        rows, rep = build_category(cat, tokenizer)
        write_rows(out_dir / f"{cat.name}.jsonl", [alts.with_alt(r) for r in rows])
        reports[cat.name] = rep
        if verbose:
            drops = ", ".join(f"{k} {v}" for k, v in sorted(rep["dropped"].items())) or "none"
            print(f"{cat.name:24s} {cat.type:8s} generated {rep['generated']:4d}  kept {rep['kept']:4d}"
                  f"  (hand-written {rep['hand_kept']}/{rep['hand']})  dropped: {drops}")
            for reason, ex in rep["examples"].items() if examples else ():
                for e in ex:
                    print(f"    {reason}: {e}")
    return reports


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(BANK_DIR), help="output folder (default: the package bank)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only the per-category summary")
    args = ap.parse_args()
    main(args.out, verbose=True, examples=not args.quiet)
