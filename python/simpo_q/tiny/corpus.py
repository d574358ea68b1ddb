"""Generates the bundled data deterministically: a calibration text of varied prose, code,
dialogue, lists and numbers in several languages, and a preference set in the
princeton-nlp/gemma2-ultrafeedback-armorm format whose chosen answers are systematically
better (correct, on topic) than the rejected ones.

An evaluation text of questions and answers is kept apart from the calibration text.

Everything here is written for simpo-q, so the data is licence-clean. The committed files
under `simpo_q/data/` are this module's output; a test checks they still are.
"""

from __future__ import annotations

import json
import random

PROSE_EN = [
    "The river bends twice before it reaches the old mill, and in spring the water runs high enough "
    "to turn the wheel again.",
    "Most of the village still buys bread from the bakery on the square, which opens at six and closes "
    "when the last loaf is gone.",
    "A good map leaves things out: it keeps the roads, the rivers and the names, and forgets the rest.",
    "She measured the room twice, wrote both numbers down, and only then went to buy the paint.",
    "When the wind comes from the east the harbour smells of salt and diesel, and the gulls stay inland.",
    "The library keeps its oldest books in a cold room without windows, where paper ages more slowly.",
    "Every autumn the school plants a row of trees along the fence, one for each class that leaves.",
    "He learned to cook from a notebook his grandmother kept, full of crossed-out amounts and small notes.",
    "The train was late, so the passengers talked, and by the time it came half of them were friends.",
    "Bees visit the lavender in the morning and the clover in the afternoon, as if they kept a timetable.",
    "A bridge is a promise made in stone: it says that the other side is worth reaching.",
    "The committee met on Tuesday, read the report, and decided to meet again on Thursday.",
    "In the desert the night is cold enough for frost, even after a day too hot to walk in.",
    "The repair took an hour; finding the loose wire took the whole afternoon.",
    "Children ask why the sky is blue, and adults who know the answer rarely explain it well.",
    "The market sells apples by the kilogram, eggs by the dozen and honey by the jar.",
    "Light from the nearest star takes a little more than four years to reach us.",
    "A careful reader notices what a sentence leaves unsaid as well as what it says.",
    "The orchestra tuned for a long minute, then the hall went quiet and the conductor raised a hand.",
    "Snow fell all night, and in the morning the street had no edges, only soft white shapes.",
]
PROSE_FR = [
    "Le marché ouvre tôt le samedi, et les premiers clients repartent avec les meilleures tomates.",
    "La rivière traverse la ville du nord au sud, sous sept ponts de pierre.",
    "Il a plu toute la nuit, mais le matin le ciel était clair et l'air sentait la terre mouillée.",
    "Elle lit un chapitre chaque soir avant de dormir, jamais plus, jamais moins.",
    "Le boulanger se lève à quatre heures pour que le pain soit prêt à l'ouverture.",
]
PROSE_DE = [
    "Der Zug fährt um acht Uhr ab, aber die meisten Reisenden sind schon um halb acht am Bahnsteig.",
    "Im Winter friert der See zu, und die Kinder laufen am Wochenende Schlittschuh.",
    "Das Museum zeigt alte Uhren, von denen manche noch immer die richtige Zeit anzeigen.",
    "Wer früh aufsteht, hat den Garten für sich allein, bevor die Nachbarn kommen.",
]
PROSE_ES = [
    "La plaza se llena de gente por la tarde, cuando el sol ya no quema y corre un poco de brisa.",
    "El tren atraviesa las montañas por un túnel largo y oscuro.",
    "Mi abuela guardaba las recetas en una caja de lata, escritas a mano en tarjetas amarillas.",
    "Los pescadores salen antes del amanecer y vuelven al mediodía con las redes llenas.",
]
PROSE_OTHER = [
    "Η θάλασσα ήταν ήρεμη το πρωί, και οι βάρκες έφυγαν νωρίς για ψάρεμα.",
    "Утром на рынке продают свежий хлеб, молоко и яблоки из соседнего сада.",
    "今日は朝から雨が降っているので、図書館で本を読むことにしました。",
    "这座城市有一条很长的河，河边每天早上都有很多人散步。",
    "Il treno per Milano parte alle nove, ma conviene arrivare in stazione un po' prima.",
    "O café abre às sete e fecha quando o último cliente vai embora.",
]
TOPICS = ["rivers", "bread", "maps", "trains", "bees", "bridges", "libraries", "music", "snow", "stars"]
NAMES = ["Ada", "Bruno", "Chloé", "Dmitri", "Elif", "Farah", "Goran", "Hana", "Ines", "Jonas"]
CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Spain", "Madrid"),
    ("Italy", "Rome"),
    ("Japan", "Tokyo"),
    ("Canada", "Ottawa"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
    ("Greece", "Athens"),
    ("Poland", "Warsaw"),
    ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"),
    ("Chile", "Santiago"),
    ("Austria", "Vienna"),
]
COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red"}
OPPOSITES = [
    ("hot", "cold"),
    ("up", "down"),
    ("early", "late"),
    ("open", "closed"),
    ("full", "empty"),
    ("light", "dark"),
    ("fast", "slow"),
    ("old", "new"),
]
TOPIC_FACTS = {
    "rivers": "Rivers carry water from high ground to the sea, and most of them end in a delta or an estuary.",
    "bees": "Bees collect nectar from flowers and turn it into honey inside the hive.",
    "bridges": "A bridge carries a road or a railway across a river, a valley or another road.",
    "trains": "Trains run on rails, which lets them carry heavy loads with little friction.",
    "stars": "Stars shine because nuclear fusion in their cores turns hydrogen into helium.",
    "snow": "Snow forms when water vapour freezes into ice crystals inside a cloud.",
    "bread": "Bread rises because yeast produces carbon dioxide that the dough traps as bubbles.",
    "libraries": "Libraries lend books for free and keep them in order with a catalogue.",
}
WORDS_FR = [
    ("cat", "chat"),
    ("dog", "chien"),
    ("house", "maison"),
    ("water", "eau"),
    ("bread", "pain"),
    ("book", "livre"),
    ("tree", "arbre"),
    ("sun", "soleil"),
]


def _code_python(rng: random.Random) -> str:
    fn = rng.choice(["total", "average", "largest", "count_even", "clamp_all"])
    var = rng.choice(["values", "items", "xs", "numbers"])
    body = {
        "total": f"    result = 0\n    for v in {var}:\n        result += v\n    return result\n",
        "average": f"    if not {var}:\n        return 0.0\n    return sum({var}) / len({var})\n",
        "largest": f"    best = {var}[0]\n    for v in {var}[1:]:\n        if v > best:\n"
        f"            best = v\n    return best\n",
        "count_even": f"    return sum(1 for v in {var} if v % 2 == 0)\n",
        "clamp_all": f"    return [min(hi, max(lo, v)) for v in {var}]\n",
    }[fn]
    args = f"{var}, lo, hi" if fn == "clamp_all" else var
    demo = [rng.randint(-20, 99) for _ in range(rng.randint(3, 7))]
    return f"def {fn}({args}):\n{body}\n\nprint({fn}({demo}{', 0, 50' if fn == 'clamp_all' else ''}))\n"


def _code_rust(rng: random.Random) -> str:
    n = rng.randint(2, 9)
    return (
        f"fn scale(v: &mut [f32], k: f32) {{\n    for x in v.iter_mut() {{\n        *x *= k;\n    }}\n}}\n\n"
        f"fn main() {{\n    let mut v = vec![{', '.join(f'{rng.uniform(-3, 3):.2f}' for _ in range(n))}];\n"
        f'    scale(&mut v, {rng.uniform(0.5, 2):.1f});\n    println!("{{:?}}", v);\n}}\n'
    )


def _dialogue(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    topic = rng.choice(TOPICS)
    lines = [
        f"{a}: Have you read anything good about {topic} lately?",
        f"{b}: A little. Did you know {rng.choice(PROSE_EN).lower()}",
        f"{a}: I did not. Where did you find that?",
        f"{b}: In a book from the library, on the second shelf by the window.",
        f"{a}: I'll look for it tomorrow. Thanks, {b}.",
    ]
    return "\n".join(lines[: rng.randint(3, 5)]) + "\n"


def _list(rng: random.Random) -> str:
    kind = rng.choice(["shopping", "steps", "numbers"])
    if kind == "shopping":
        items = rng.sample(
            ["apples", "flour", "eggs", "milk", "rice", "lentils", "coffee", "soap", "onions", "honey", "salt", "tea"],
            5,
        )
        return "Shopping list:\n" + "".join(f"- {i} ({rng.randint(1, 6)})\n" for i in items)
    if kind == "steps":
        steps = [
            "Read the instructions.",
            "Gather the tools.",
            "Measure twice.",
            "Cut once.",
            "Check the result.",
            "Clean up.",
        ]
        return "How to do it:\n" + "".join(f"{i + 1}. {s}\n" for i, s in enumerate(steps))
    rows = [(rng.randint(1, 12), rng.randint(1, 12)) for _ in range(5)]
    return "Multiplication table:\n" + "".join(f"{x} x {y} = {x * y}\n" for x, y in rows)


def _numbers(rng: random.Random) -> str:
    year = rng.randint(1850, 2025)
    temps = ", ".join(f"{rng.uniform(-5, 35):.1f}" for _ in range(7))
    return (
        f"In {year} the town counted {rng.randint(800, 90000)} inhabitants. "
        f"Daily temperatures (°C) that week: {temps}. "
        f"The total rainfall was {rng.randint(0, 250)} mm over {rng.randint(1, 30)} days.\n"
    )


def _prose(rng: random.Random) -> str:
    bank = rng.choice([PROSE_EN, PROSE_EN, PROSE_EN, PROSE_FR, PROSE_DE, PROSE_ES, PROSE_OTHER])
    return " ".join(rng.sample(bank, min(len(bank), rng.randint(2, 4)))) + "\n"


def calibration_text(min_bytes: int = 80_000, seed: int = 1234) -> str:
    rng = random.Random(seed)
    makers = [_prose, _prose, _prose, _dialogue, _list, _numbers, _code_python, _code_rust]
    parts: list[str] = []
    size = 0
    while size < min_bytes:
        chunk = rng.choice(makers)(rng) + "\n"
        parts.append(chunk)
        size += len(chunk.encode("utf-8"))
    return "".join(parts)


def _pair(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(["add", "mul", "capital", "colour", "opposite", "translate", "sort", "topic"])
    if kind == "add":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        wrong = a + b + rng.choice([-11, -3, -1, 1, 2, 10])
        return f"What is {a} + {b}?", f"{a} + {b} = {a + b}.", f"{a} + {b} = {wrong}."
    if kind == "mul":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        wrong = a * b + rng.choice([-a, -1, 1, b])
        return f"What is {a} times {b}?", f"{a} times {b} is {a * b}.", f"{a} times {b} is {wrong}."
    if kind == "capital":
        (country, city), (_, other) = rng.sample(CAPITALS, 2)
        return (
            f"What is the capital of {country}?",
            f"The capital of {country} is {city}.",
            f"The capital of {country} is {other}.",
        )
    if kind == "colour":
        thing = rng.choice(sorted(COLOURS))
        wrong = rng.choice([c for c in sorted(set(COLOURS.values())) if c != COLOURS[thing]])
        return (
            f"What colour is {thing}, usually?",
            f"{thing.capitalize()} is usually {COLOURS[thing]}.",
            f"{thing.capitalize()} is usually {wrong}.",
        )
    if kind == "opposite":
        (w, o), (_, other) = rng.sample(OPPOSITES, 2)
        return (
            f"What is the opposite of '{w}'?",
            f"The opposite of '{w}' is '{o}'.",
            f"The opposite of '{w}' is '{other}'.",
        )
    if kind == "translate":
        (en, fr), (_, other) = rng.sample(WORDS_FR, 2)
        return f"Translate '{en}' into French.", f"'{en}' in French is '{fr}'.", f"'{en}' in French is '{other}'."
    if kind == "sort":
        xs = rng.sample(range(1, 60), 5)
        shuffled = xs[:]
        while shuffled == sorted(xs):
            rng.shuffle(shuffled)
        return (
            f"Sort these numbers from smallest to largest: {', '.join(map(str, xs))}.",
            f"Sorted: {', '.join(map(str, sorted(xs)))}.",
            f"Sorted: {', '.join(map(str, shuffled))}.",
        )
    topic, other = rng.sample(sorted(TOPIC_FACTS), 2)
    return (
        f"Tell me one fact about {topic}.",
        TOPIC_FACTS[topic],
        f"I would rather talk about {other}. {other.capitalize()} are interesting.",
    )


def preference_pairs(n: int = 240, seed: int = 4321) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, good, bad = _pair(rng)
        rows.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": good}],
                "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": bad}],
                "score_chosen": round(rng.uniform(0.80, 0.98), 4),
                "score_rejected": round(rng.uniform(0.20, 0.60), 4),
            }
        )
    return rows


def preference_jsonl(n: int = 240, seed: int = 4321) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in preference_pairs(n, seed))


def evaluation_text(min_bytes: int = 40_000, seed: int = 2468) -> str:
    """Held-out text for quality measurements: questions and answers (the preference pairs'
    kinds, never the calibration text's sentences), so that a quantizer tuned on the
    calibration text is not judged on it."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < min_bytes:
        prompt, good, _ = _pair(rng)
        chunk = f"Question: {prompt}\nAnswer: {good}\n\n"
        parts.append(chunk)
        size += len(chunk.encode("utf-8"))
    return "".join(parts)


def gsm8k_sample(n: int = 24, seed: int = 1357) -> str:
    """Word problems in GSM8K's public layout (`question`, `answer` ending in "#### N"),
    written for simpo-q's tests of `eval tasks`; the real test set is the user's."""
    rng = random.Random(seed)
    names = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana"]
    things = [("apples", "basket"), ("books", "shelf"), ("stamps", "album"), ("shells", "jar")]
    rows = []
    for _ in range(n):
        who, (thing, box) = rng.choice(names), rng.choice(things)
        a, b, c = rng.randint(2, 9), rng.randint(3, 12), rng.randint(1, 20)
        q = (
            f"{who} has {a} {box}s with {b} {thing} in each {box}, and gives away {c} {thing}. "
            f"How many {thing} does {who} have left?"
        )
        total = a * b
        sol = (
            f"{who} starts with {a} * {b} = <<{a}*{b}={total}>>{total} {thing}.\n"
            f"After giving away {c}, {total} - {c} = <<{total}-{c}={total - c}>>{total - c} are left.\n"
            f"#### {total - c}"
        )
        rows.append({"question": q, "answer": sol})
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def mmlu_redux_sample(n: int = 24, seed: int = 9753) -> str:
    """Multiple-choice questions in MMLU-Redux's public layout (`question`, `choices`, and
    `answer`, the index of the correct choice), written for simpo-q's tests."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        (country, city), *others = rng.sample(CAPITALS, 4)
        choices = [city, *(o[1] for o in others)]
        rng.shuffle(choices)
        rows.append(
            {
                "question": f"What is the capital of {country}?",
                "subject": "geography",
                "choices": choices,
                "answer": choices.index(city),
            }
        )
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
