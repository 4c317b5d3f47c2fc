#!/usr/bin/env python3
"""Makes the README main job's dataset: a small task the base model gets wrong and a short
QLoRA fine-tune visibly gets right, scored on words the training never saw.

The task: name the category of a word with exactly one lowercase word out of a fixed set
(animal, fruit, color, country, vehicle, instrument). An instruct model of 135M parameters
mostly knows what a tiger is, but answers in sentences, capitalised, or with the wrong
label name, so exact-match is low; fine-tuning teaches the answer format and the label set,
and the held-out words show it generalises instead of memorising.

Writes chat-format JSONL ({"messages": [...]}) to OUT_DIR/train.jsonl and
OUT_DIR/heldout.jsonl. Deterministic (seeded). Standard library only.
Usage: make_task_data.py OUT_DIR
"""
import json
import os
import random
import sys

WORDS = {
    "animal": """tiger lion elephant giraffe zebra wolf fox bear rabbit horse cow sheep goat pig
        dog cat mouse deer camel kangaroo monkey gorilla panda koala squirrel otter beaver
        leopard cheetah hippo rhino donkey moose bison raccoon hedgehog badger""",
    "fruit": """apple banana orange grape mango pear peach plum cherry lemon lime kiwi papaya
        pineapple strawberry blueberry raspberry watermelon melon apricot fig coconut
        pomegranate guava lychee nectarine tangerine grapefruit blackberry cranberry date
        persimmon quince passionfruit cantaloupe""",
    "color": """red blue green yellow purple orange pink brown black white gray violet indigo
        turquoise magenta cyan maroon beige crimson scarlet navy teal lavender gold silver
        olive amber ivory coral emerald burgundy charcoal mint peach tan""",
    "country": """France Germany Spain Italy Japan China India Brazil Canada Mexico Egypt
        Kenya Nigeria Argentina Chile Peru Russia Australia Sweden Norway Finland Poland
        Greece Turkey Iran Vietnam Thailand Indonesia Portugal Ireland Denmark Austria
        Belgium Switzerland Morocco""",
    "vehicle": """car bus truck bicycle motorcycle train tram airplane helicopter boat ship
        submarine scooter van taxi tractor ambulance limousine jeep canoe kayak yacht
        ferry sled snowmobile rocket glider skateboard wagon minivan pickup forklift
        bulldozer hovercraft trolley""",
    "instrument": """piano guitar violin cello drum flute trumpet saxophone clarinet harp
        trombone tuba oboe banjo ukulele accordion harmonica xylophone bagpipes mandolin
        sitar organ bassoon tambourine cymbals viola harpsichord lute marimba bugle
        synthesizer kazoo triangle gong""",
}

PROMPTS = [
    "Which category does the word \"{w}\" belong to? Answer with one word: {labels}.",
    "Classify \"{w}\" as one of: {labels}. Reply with the category only.",
    "Category of \"{w}\"? Choose from {labels}. One word, lowercase.",
]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = random.Random(1234)
    labels = ", ".join(WORDS)
    items = []
    seen = set()
    for label, words in WORDS.items():
        for w in words.split():
            if w.lower() in seen:  # "orange" and "peach" are a fruit and a color: keep the first
                continue
            seen.add(w.lower())
            items.append((w, label))
    rng.shuffle(items)
    n_held = len(items) // 5
    held, train = items[:n_held], items[n_held:]

    def record(w, label, k):
        q = PROMPTS[k % len(PROMPTS)].format(w=w, labels=labels)
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": label}]}

    with open(os.path.join(out, "train.jsonl"), "w") as f:
        for i, (w, label) in enumerate(train):
            f.write(json.dumps(record(w, label, i)) + "\n")
    with open(os.path.join(out, "heldout.jsonl"), "w") as f:
        for i, (w, label) in enumerate(held):
            f.write(json.dumps(record(w, label, i)) + "\n")
    print(f"{out}: {len(train)} training and {len(held)} held-out examples, {len(WORDS)} categories")


if __name__ == "__main__":
    main()
