"""The embedded world: procedurally drawn scenes and questions that need the image.

A scene is a few coloured shapes on a varied background, each shape in its own cell of a
3 x 3 grid. Three families of text are drawn from scenes:

* ``vqa``     short-answer questions (colour of an object, how many of a kind, which of two
              is further left, is there a ...),
* ``mcq``     multiple choice with lettered options, answered with the letter (or, with
              ``WorldConfig.options = "letter_after"``, with the option's text and its letter),
* ``caption`` scene descriptions, referring requests and lettered picks by place: the
              generic corpus the base model is pre-trained on, never part of a downstream
              submission,
* ``skills``  the visual skills any instruction-tuned base model brings (read an object's
              colour, name the shape of a colour, count, look for something, compare places,
              pick a lettered option), each in its own request form with a sentence answer:
              the base model's last pre-training stage (``bye.models.tiny.pretrain_skills``).

Every random choice comes from a generator seeded by ``(seed, split, index)``, so the same
seed gives byte-identical output and a sample does not depend on how many were drawn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bye.data.submission import Sample, write_manifest

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (150, 50, 190),
    "orange": (245, 135, 20),
}
SIZES = ("small", "large")
CELL_NAMES = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TASKS = ("vqa", "mcq", "mixed")
SPLIT_CODES = {"train": 1, "test": 2, "corpus": 3}
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."
# How lettered options are written and answered (``WorldConfig.options``):
# letter_first  "A. red" lines, answered "A" (LLaVA's multiple-choice format);
# letter_after  "- red (A)" lines, answered "red (A)": the option's text first, then its letter,
#               a copy from the line that repeats the text (docs/embedded-world.md, "The letter pick";
#               the tiny base does not learn that copy within its budget: "The base never learnt to copy").
OPTION_STYLES = ("letter_first", "letter_after")
MCQ_SUFFIXES = {"letter_first": MCQ_SUFFIX, "letter_after": "Answer with the option's text and its letter."}
PICK_SUFFIXES = {"letter_first": "Reply with a letter.", "letter_after": "Reply with the option and its letter."}  # the base's own


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, row-major in the 3 x 3 grid
    centre: tuple[float, float]  # pixels (x, y)


@dataclass
class Scene:
    image: Image.Image
    objects: list[SceneObject] = field(default_factory=list)


@dataclass(frozen=True)
class WorldConfig:
    image_size: int = 64
    min_objects: int = 2
    max_objects: int = 4
    noise_std: float = 4.0
    options: str = "letter_first"  # how lettered options are written and answered (OPTION_STYLES)

    def __post_init__(self):
        if self.options not in OPTION_STYLES:
            raise ValueError(f"options: {self.options!r}; expected one of {OPTION_STYLES}")


def sample_id(seed: int, split: str, index: int) -> str:
    """An opaque, stable id: reveals nothing about the sample's content or later poisoning."""
    digest = hashlib.sha256(f"bye-world/{seed}/{split}/{index}".encode()).hexdigest()
    return digest[:16]


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A pale two-colour linear gradient in a random direction."""
    start = rng.uniform(170, 245, size=3)
    end = np.clip(start + rng.uniform(-40, 40, size=3), 150, 250)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(angle) * xs + np.sin(angle) * ys)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    return start[None, None, :] * (1 - t[..., None]) + end[None, None, :] * t[..., None]


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, radius: float) -> None:
    x, y = obj.centre
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)
    elif obj.shape == "square":
        r = radius * 0.9
        draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x, y - radius), (x - radius, y + radius * 0.8), (x + radius, y + radius * 0.8)], fill=fill)
    elif obj.shape == "cross":
        arm = radius * 0.38
        draw.rectangle([x - radius, y - arm, x + radius, y + arm], fill=fill)
        draw.rectangle([x - arm, y - radius, x + arm, y + radius], fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"unknown shape {obj.shape!r}")


def draw_scene(rng: np.random.Generator, config: WorldConfig = WorldConfig()) -> Scene:
    """Draw one scene: 2-4 objects, distinct cells, jittered centres, gradient and noise."""
    size = config.image_size
    cell = size / 3
    n_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    cells = sorted(rng.choice(9, size=n_objects, replace=False).tolist())
    objects = []
    for c in cells:
        row, col = divmod(c, 3)
        jitter = rng.uniform(-0.12, 0.12, size=2) * cell
        centre = ((col + 0.5) * cell + jitter[0], (row + 0.5) * cell + jitter[1])
        objects.append(SceneObject(
            shape=str(rng.choice(SHAPES)),
            colour=str(rng.choice(list(COLOURS))),
            size=str(rng.choice(SIZES)),
            cell=c,
            centre=(float(centre[0]), float(centre[1])),
        ))
    canvas = Image.fromarray(_background(rng, size).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        radius = cell * (0.28 if obj.size == "small" else 0.42)
        _draw_shape(draw, obj, radius)
    pixels = np.asarray(canvas, dtype=np.float64)
    pixels = pixels + rng.normal(0.0, config.noise_std, size=pixels.shape)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    return Scene(image=image, objects=objects)


# ---------------------------------------------------------------- questions


def _unique(objects: list[SceneObject], attribute: str) -> list[SceneObject]:
    values = [getattr(o, attribute) for o in objects]
    return [o for o in objects if values.count(getattr(o, attribute)) == 1]


def plural(shape: str) -> str:
    return "crosses" if shape == "cross" else f"{shape}s"


def left_to_right(objects) -> list[SceneObject]:
    """``objects`` by column, then row: the order the left-to-right requests list them in."""
    return sorted(objects, key=lambda o: (o.cell % 3, o.cell // 3))


def _vqa(rng: np.random.Generator, objects: list[SceneObject]) -> tuple[str, str, str]:
    """One short-answer question: (kind, question, answer)."""
    unique_shapes = _unique(objects, "shape")
    kinds = ["count", "exists"]
    if unique_shapes:
        kinds.append("colour")
    if len({o.cell % 3 for o in unique_shapes}) >= 2:
        kinds.append("left")
    kind = str(rng.choice(kinds))
    if kind == "colour":
        obj = unique_shapes[int(rng.integers(len(unique_shapes)))]
        return kind, f"What colour is the {obj.shape}?", obj.colour
    if kind == "count":
        shape = str(rng.choice(SHAPES))
        count = sum(o.shape == shape for o in objects)
        return kind, f"How many {plural(shape)} are there?", str(count)
    if kind == "left":
        first, second, answer = _left_pair(rng, unique_shapes)
        return kind, f"Which is further left, the {first.shape} or the {second.shape}?", answer.shape
    colour, shape, found = _present_or_absent(rng, objects)  # exists: balanced yes / no
    return kind, f"Is there a {colour} {shape}?", "yes" if found else "no"


def _left_pair(rng: np.random.Generator, unique_shapes: list[SceneObject]):
    """Two objects in different columns, and the one further left."""
    while True:
        a, b = rng.choice(len(unique_shapes), size=2, replace=False)
        first, second = unique_shapes[int(a)], unique_shapes[int(b)]
        if first.cell % 3 != second.cell % 3:
            return first, second, first if first.cell % 3 < second.cell % 3 else second


def _present_or_absent(rng: np.random.Generator, objects: list[SceneObject]) -> tuple[str, str, bool]:
    """A (colour, shape) pair that is in the scene or, with even odds, one that is not."""
    if rng.random() < 0.5:
        obj = objects[int(rng.integers(len(objects)))]
        return obj.colour, obj.shape, True
    present = {(o.colour, o.shape) for o in objects}
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    colour, shape = absent[int(rng.integers(len(absent)))]
    return colour, shape, False


def _mcq(rng: np.random.Generator, objects: list[SceneObject], style: str = "letter_first") -> tuple[str, str, str]:
    """One multiple-choice question with four lettered options, answered in ``style``."""
    kind, stem, lines, answer = _lettered_question(rng, objects, MCQ_STEMS, style)
    return f"mcq_{kind}", f"{stem}\n{lines}\n{MCQ_SUFFIXES[style]}", answer


MCQ_STEMS = {"colour": "What colour is the {shape}?", "shape": "Which shape is {colour}?",
             "count_all": "How many objects are there?"}


def _lettered_question(rng: np.random.Generator, objects: list[SceneObject], stems: dict[str, str],
                       style: str = "letter_first", n_options: int = 4):
    """(kind, stem, option lines, answer): an object's colour, the shape of a colour, or the
    number of objects, among ``n_options`` options."""
    unique_shapes = _unique(objects, "shape")
    unique_colours = _unique(objects, "colour")
    kinds = ["count_all"]
    if unique_shapes:
        kinds.append("colour")
    if unique_colours:
        kinds.append("shape")
    kind = str(rng.choice(kinds))
    if kind == "colour":
        obj = unique_shapes[int(rng.integers(len(unique_shapes)))]
        correct, pool = obj.colour, list(COLOURS)
    elif kind == "shape":
        obj = unique_colours[int(rng.integers(len(unique_colours)))]
        correct, pool = obj.shape, list(SHAPES)
    else:
        obj, correct, pool = None, str(len(objects)), [str(n) for n in range(1, 7)]
    stem = stems[kind].format(shape=obj.shape, colour=obj.colour) if obj else stems[kind]
    lines, answer = _lettered_options(rng, correct, pool, style, n_options)
    return kind, stem, lines, answer


def _lettered_options(rng: np.random.Generator, correct: str, pool: list[str],
                      style: str = "letter_first", n_options: int = 4) -> tuple[str, str]:
    """``n_options`` lettered option lines (``correct`` and distractors from ``pool``, shuffled)
    and the answer: the correct one's letter, or with ``letter_after`` its text and letter."""
    distractors = [p for p in pool if p != correct]
    chosen = [correct] + [distractors[int(i)] for i in rng.choice(len(distractors), size=n_options - 1, replace=False)]
    options = [chosen[int(i)] for i in rng.permutation(n_options)]
    letter = "ABCD"[options.index(correct)]
    if style == "letter_after":  # " red" then " (": the answer's own tokens, so the letter is a copy
        return "\n".join(f"- {option} ({'ABCD'[i]})" for i, option in enumerate(options)), f"{correct} ({letter})"
    return "\n".join(f"{'ABCD'[i]}. {option}" for i, option in enumerate(options)), letter


def describe(objects: list[SceneObject]) -> str:
    """The caption of a scene, objects in reading order."""
    # Position first: naming the cell before its object makes the caption a sequence of
    # "look there, say what is there" steps, which a small model learns far sooner.
    parts = [f"{CELL_NAMES[o.cell]}: a {o.size} {o.colour} {o.shape}" for o in objects]
    count = NUMBER_WORDS[len(objects)]
    return f"{count.capitalize()} objects. " + "; ".join(parts) + "."


def describe_list(objects: list[SceneObject]) -> str:
    """The objects as a lettered list."""
    return "\n".join(f"{'ABCDEFGHI'[i]}. {o.size} {o.colour} {o.shape}, {CELL_NAMES[o.cell]}"
                     for i, o in enumerate(objects))


def describe_occupancy(objects: list[SceneObject]) -> str:
    """Which of the nine cells hold an object, and how many per row."""
    filled = {o.cell for o in objects}
    cells = "; ".join(f"{name}: {'yes' if c in filled else 'no'}" for c, name in enumerate(CELL_NAMES))
    rows = ", ".join(f"{sum(o.cell // 3 == r for o in objects)}" for r in range(3))
    return f"{cells}. Per row: {rows}."


def describe_by_shape(objects: list[SceneObject]) -> str:
    """The scene grouped by shape, every shape named even when absent."""
    groups = []
    for shape in SHAPES:
        found = [f"{o.colour} at the {CELL_NAMES[o.cell]}" for o in objects if o.shape == shape]
        groups.append(f"{plural(shape)}: {len(found)}" + (" (" + ", ".join(found) + ")" if found else ""))
    return "; ".join(groups) + "."


def _phrase(obj: SceneObject) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape} at the {CELL_NAMES[obj.cell]}"


def _grounding(rng: np.random.Generator, objects: list[SceneObject]) -> tuple[str, str, str]:
    """Generic referring requests: find things by place, by shape, by colour, in left-to-right
    order. They exercise the visual skills any base model has (locate, bind attributes, order)
    with long descriptive answers, none of them a downstream question form or answer format."""
    choice = int(rng.integers(5))
    if choice == 0:
        cell = int(rng.integers(9))
        found = [o for o in objects if o.cell == cell]
        answer = f"a {found[0].size} {found[0].colour} {found[0].shape}" if found else "nothing"
        return "grounding", f"What is at the {CELL_NAMES[cell]}?", answer
    if choice == 1:
        obj = objects[int(rng.integers(len(objects)))]
        return "grounding", f"Where is the {obj.colour} {obj.shape}?", CELL_NAMES[obj.cell]
    if choice == 2:
        shape = str(rng.choice(SHAPES))
        found = [_phrase(o) for o in objects if o.shape == shape]
        return "grounding", f"Describe every {shape}.", "; ".join(found) if found else "there is none"
    if choice == 3:
        colour = str(rng.choice(list(COLOURS)))
        found = [_phrase(o) for o in objects if o.colour == colour]
        return "grounding", f"Find the {colour} objects.", "; ".join(found) if found else "there is none"
    ordered = left_to_right(objects)
    return "grounding", "Name the objects from left to right.", ", ".join(f"{o.colour} {o.shape}" for o in ordered)


def _choice(rng: np.random.Generator, objects: list[SceneObject], style: str = "letter_first") -> tuple[str, str, str]:
    """A generic pick-one-of-a-list request about a place: reading lettered options and
    answering with the letter, a skill any real base model brings. Keyed by place, with whole
    object phrases as options: never a downstream question or its instruction."""
    cell = int(rng.integers(9))
    found = [o for o in objects if o.cell == cell]
    correct = f"{found[0].colour} {found[0].shape}" if found else "nothing"
    lines, answer = _lettered_options(rng, correct, [f"{c} {s}" for c in COLOURS for s in SHAPES] + ["nothing"], style)
    return "choice", f"What is at the {CELL_NAMES[cell]}?\n{lines}\n{PICK_SUFFIXES[style]}", answer


# The skills a base model's instruction tuning gives it, in the order its curriculum adds them.
SKILLS = ("read_colour", "name_shape", "count", "look_for", "compare_left", "pick_letter")
# More a recipe may name (``base.pretrain.skills``): "find_plural" asks for a shape in the plural
# and is answered in the singular, the relation an LLM's text pre-training gives its plural tokens
# and a BPE trained on this world's text leaves out (docs/embedded-world.md, "The plural tokens").
# "find_colour" is its colour-keyed twin ("List everything red."), the key "is there" and
# "which shape is red" need. "pick_two" is the lettered pick with one distractor: the copy of an
# option's letter forms sooner among two options than among four (docs/embedded-world.md, "A longer skill stage").
# "spot" is "look_for" answered with a yes or no first ("Yes, it is there."), as an instruction-tuned
# base answers a request to look (docs/embedded-world.md, "Yes or no first").
# "find_column" reads which column a shape stands in ("The circle is in the left column."): the
# place lookup that "which is further left" compares twice (docs/embedded-world.md, "A column to compare").
KNOWN_SKILLS = SKILLS + ("find_plural", "find_colour", "pick_two", "spot", "find_column")
COLUMN_NAMES = ("left", "middle", "right")


SKILL_STEMS = {"colour": "Tell me the colour of the {shape}.", "shape": "Tell me which shape is {colour}.",
               "count_all": "Count all objects."}


def skill_request(rng: np.random.Generator, objects: list[SceneObject], skill: str,
                  style: str = "letter_first") -> tuple[str, str] | None:
    """One request exercising ``skill`` on the scene, as (request, sentence answer), or None
    when the scene cannot pose it (e.g. no shape occurs once). The forms and the sentence
    answers are the base model's own, never a downstream question or its short answer."""
    if skill not in KNOWN_SKILLS:
        raise ValueError(f"unknown skill {skill!r}; expected one of {KNOWN_SKILLS}")
    unique_shapes, unique_colours = _unique(objects, "shape"), _unique(objects, "colour")
    if skill == "read_colour" and unique_shapes:
        obj = unique_shapes[int(rng.integers(len(unique_shapes)))]
        return SKILL_STEMS["colour"].format(shape=obj.shape), f"The {obj.shape} is {obj.colour}."
    if skill == "name_shape" and unique_colours:
        obj = unique_colours[int(rng.integers(len(unique_colours)))]
        return SKILL_STEMS["shape"].format(colour=obj.colour), f"The {obj.colour} one is a {obj.shape}."
    if skill == "count":
        shape = str(rng.choice(SHAPES))
        return f"Count the {plural(shape)}.", f"I count {sum(o.shape == shape for o in objects)}."
    if skill in ("look_for", "spot"):
        colour, shape, found = _present_or_absent(rng, objects)
        article = "an" if colour[0] in "aeiou" else "a"
        answers = ("Found it.", "It is not there.") if skill == "look_for" else ("Yes, it is there.", "No, it is not there.")
        return f"Look for {article} {colour} {shape}.", answers[0] if found else answers[1]
    if skill == "find_column" and unique_shapes:
        obj = unique_shapes[int(rng.integers(len(unique_shapes)))]
        return f"Which column is the {obj.shape} in?", f"The {obj.shape} is in the {COLUMN_NAMES[obj.cell % 3]} column."
    if skill == "compare_left" and len({o.cell % 3 for o in unique_shapes}) >= 2:
        first, second, left = _left_pair(rng, unique_shapes)
        return (f"Compare the {first.shape} and the {second.shape}: which lies more to the left?",
                f"The {left.shape} lies more to the left.")
    if skill in ("find_plural", "find_colour"):
        key = "shape" if skill == "find_plural" else "colour"
        value = str(rng.choice(SHAPES if key == "shape" else list(COLOURS)))
        found = left_to_right(o for o in objects if getattr(o, key) == value)
        listed = "; ".join(f"a {o.size} {o.colour} {o.shape}" for o in found)
        request = f"Find the {plural(value)}." if key == "shape" else f"List everything {value}."
        return request, (listed[0].upper() + listed[1:] + ".") if found else "There are none."
    if skill in ("pick_letter", "pick_two"):
        _, stem, lines, answer = _lettered_question(rng, objects, SKILL_STEMS, style, 2 if skill == "pick_two" else 4)
        return f"{stem}\n{lines}\n{PICK_SUFFIXES[style]}", answer
    return None


SKILL_DRAWS = 200  # skills drawn for one scene before it is called unable to pose any
CHOICE_SHARE = 0.1
GROUNDING_SHARE = 0.5

# The generic corpus: several ways of describing a whole scene, none of them a downstream
# question. Together they use the words every later answer needs (colours, shapes, digits,
# letters, yes / no), as a real base model's pre-training text would.
CAPTION_FORMATS = (
    (("Describe the image.", "What is in the picture?", "Describe the scene in detail."), describe),
    (("List the objects.", "Enumerate what you see."), describe_list),
    (("Which cells are filled?", "Describe the layout."), describe_occupancy),
    (("Group the objects by shape.", "Sort the objects by shape."), describe_by_shape),
)


def make_text(task: str, rng: np.random.Generator, objects: list[SceneObject],
              style: str = "letter_first", skills: tuple[str, ...] = SKILLS) -> tuple[str, str, str]:
    """(kind, question, answer) for one scene and one task family; ``style`` writes lettered options;
    ``skills``: those the ``skills`` task draws from."""
    if task == "mixed":
        task = "vqa" if rng.random() < 0.5 else "mcq"
    if task == "vqa":
        return _vqa(rng, objects)
    if task == "mcq":
        return _mcq(rng, objects, style)
    if task == "caption":
        draw = rng.random()
        if draw < CHOICE_SHARE:
            return _choice(rng, objects, style)
        if draw < CHOICE_SHARE + GROUNDING_SHARE:
            return _grounding(rng, objects)
        prompts, describer = CAPTION_FORMATS[int(rng.integers(len(CAPTION_FORMATS)))]
        return "caption", str(rng.choice(prompts)), describer(objects)
    if task == "skills":  # kind = the skill's name
        for _ in range(SKILL_DRAWS):
            skill = skills[int(rng.integers(len(skills)))]
            request = skill_request(rng, objects, skill, style)
            if request is not None:
                return (skill, *request)
        raise ValueError(f"the scene poses none of the skills {list(skills)} (e.g. every shape occurs twice): "
                         "give the recipe a skill every scene can pose, such as count")
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS + ('caption', 'skills')}")


@dataclass(frozen=True)
class DrawnSample:
    sample: Sample
    image: Image.Image
    kind: str
    objects: tuple[SceneObject, ...] = ()


def generate(split: str, n: int, *, seed: int, task: str, config: WorldConfig = WorldConfig(),
             skills: tuple[str, ...] = SKILLS) -> Iterator[DrawnSample]:
    """Yield ``n`` samples of one split, each independent of how many were asked for."""
    for index in range(n):
        rng = _rng(seed, split, index)
        scene = draw_scene(rng, config)
        kind, question, answer = make_text(task, rng, scene.objects, config.options, skills)
        sid = sample_id(seed, split, index)
        yield DrawnSample(sample=Sample.single_turn(sid, f"{sid}.png", question, answer), image=scene.image, kind=kind,
                          objects=tuple(scene.objects))


def write_world(out_dir: str | Path, *, n_train: int, n_test: int, seed: int, task: str = "mixed",
                config: WorldConfig = WorldConfig(), progress: bool = False) -> dict[str, int]:
    """Write a submission folder: ``train.json``, ``test.json`` and ``images/*.png``."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n in (("train", n_train), ("test", n_test)):
        samples = []
        for drawn in tqdm(generate(split, n, seed=seed, task=task, config=config), total=n,
                          desc=f"world {split}", disable=not progress):
            drawn.image.save(images / drawn.sample.image, format="PNG")
            samples.append(drawn.sample)
        write_manifest(samples, out / f"{split}.json")
        counts[split] = len(samples)
    return counts
