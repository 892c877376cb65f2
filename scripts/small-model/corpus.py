#!/usr/bin/env python3
"""The small model's corpus, made from WordNet 3.0 (Debian package
wordnet-base; licence: WordNet 3.0, permissive, its notice in
models/small/README.md). Deterministic: the same WordNet gives the same files,
byte for byte.

    corpus.py WORDNET_DIR OUT_DIR     (WORDNET_DIR holds data.noun, index.noun, ...)

Writes to OUT_DIR:
  pretrain.txt  one dictionary entry a line (a lemma in one of its senses:
                meaning, examples, synonyms, what it is a kind of, opposites),
                for next-token pretraining;
  chat.jsonl    {"user": ..., "assistant": ...} a line: questions about a word
                answered from its entries ("What does abate mean?"), and a few
                written greetings that say what the model is;
  heldout.txt   HELDOUT_LINES entries of the held-out synsets, in the same
                form as pretrain.txt: no entry of those synsets, and no answer
                drawn from them, is in the other two files (the perplexity
                text; HELDOUT_LINES keeps `bench perplexity` on a CPU to about
                a minute);
  words.txt     every lemma and example word, lower case, sorted (what the
                e2e test calls a dictionary word).

A synset is held out when a hash of its offset and part of speech falls in
1/HELDOUT_EVERY of the range; held-out synsets are chosen before anything is
written, so both the entries and the chat answers leave them out.
"""
import hashlib
import json
import os
import random
import re
import sys

HELDOUT_EVERY = 50
HELDOUT_LINES = 400
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


class Synset:
    __slots__ = ("key", "pos", "words", "gloss", "examples", "pointers", "heldout")

    def __init__(self, key, pos, words, gloss, examples, pointers):
        self.key, self.pos, self.words = key, pos, words
        self.gloss, self.examples, self.pointers = gloss, examples, pointers
        self.heldout = False


def clean_word(raw):
    # Adjectives carry a syntactic marker such as "(a)" or "(ip)"; lemmas join words with "_".
    return re.sub(r"\([a-z]+\)$", "", raw).replace("_", " ")


def split_gloss(gloss):
    # "definition; more definition; "example one"; "example two"" -> definition, [examples]
    quote = gloss.find('"')
    definition = (gloss if quote < 0 else gloss[:quote]).strip().rstrip(";").strip()
    examples = [e.strip() for e in re.findall(r'"([^"]+)"', gloss if quote < 0 else gloss[quote:])]
    return definition, [e for e in examples if len(e) > 3]


def read_data(wordnet_dir, pos_file):
    synsets = {}
    with open(os.path.join(wordnet_dir, "data." + pos_file), encoding="latin-1") as f:
        for line in f:
            if line.startswith(" "):  # the licence header
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            offset, ss_type, w_cnt = fields[0], fields[2], int(fields[3], 16)
            words = [clean_word(fields[4 + 2 * i]) for i in range(w_cnt)]
            p = 4 + 2 * w_cnt
            p_cnt = int(fields[p])
            pointers = []
            for i in range(p_cnt):
                symbol, target, target_pos, source_target = fields[p + 1 + 4 * i: p + 5 + 4 * i]
                pointers.append((symbol, (target_pos if target_pos != "s" else "a") + target, source_target))
            definition, examples = split_gloss(gloss.strip())
            pos = "a" if ss_type == "s" else ss_type
            key = pos + offset
            synsets[key] = Synset(key, pos, words, definition, examples, pointers)
    return synsets


def read_index(wordnet_dir, pos_file, pos):
    # lemma -> (synset keys in sense order, most frequent first; tagged sense count)
    senses = {}
    with open(os.path.join(wordnet_dir, "index." + pos_file), encoding="latin-1") as f:
        for line in f:
            if line.startswith(" "):
                continue
            fields = line.split()
            lemma, synset_cnt, p_cnt = fields[0], int(fields[2]), int(fields[3])
            tagged = int(fields[5 + p_cnt])
            offsets = fields[6 + p_cnt: 6 + p_cnt + synset_cnt]
            senses[lemma.replace("_", " ")] = ([pos + o for o in offsets], tagged)
    return senses


def is_heldout(key):
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % HELDOUT_EVERY == 0


def sentence(text):
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def article(word):
    # Names (capitalised lemmas) take none: "Lincoln is a kind of President".
    if word[:1].isupper():
        return ""
    return "an" if word[:1].lower() in "aeiou" else "a"


def with_article(word):
    return f"{article(word)} {word}".strip()


def related(synsets, synset, symbol, lemma_index=None):
    # First lemmas of the synsets a pointer leads to. Lexical pointers (antonyms)
    # name their words: source/target "sstt" in hex; 0000 is a semantic pointer.
    out = []
    for sym, target, source_target in synset.pointers:
        if sym != symbol or target not in synsets:
            continue
        source, dest = int(source_target[:2], 16), int(source_target[2:], 16)
        if lemma_index is not None and source not in (0, lemma_index + 1):
            continue
        words = synsets[target].words
        word = words[dest - 1] if dest else words[0]
        if word not in out:
            out.append(word)
    return out


def mentions(example, lemma):
    # Whether an example sentence uses the lemma (or an inflection of it).
    lemma = lemma.lower()
    stem = lemma[:-1] if lemma.endswith("e") and len(lemma) > 4 else lemma
    text = example.lower()
    if " " in lemma:
        return lemma in text
    return any(w.startswith(stem) and len(w) <= len(lemma) + 4 for w in re.findall(r"[a-z'-]+", text))


def meaning(lemma, synset):
    gloss = synset.gloss
    if synset.pos == "v" and not gloss.startswith("to "):
        gloss = "to " + gloss
    return f"{lemma} means {gloss}"


def entry(synsets, synset, lemma_index):
    """One line of text: the lemma in this sense."""
    lemma = synset.words[lemma_index]
    parts = [f"{lemma} ({POS_NAMES[synset.pos]}): {sentence(meaning(lemma, synset))}"]
    if synset.examples:
        parts.append("For example: " + "; ".join(f'"{e}"' for e in synset.examples[:3]) + ".")
    others = [w for w in synset.words if w != lemma]
    if others:
        parts.append(sentence(f"Other words for it: {', '.join(others[:6])}".rstrip(".")))
    hypernyms = related(synsets, synset, "@") + related(synsets, synset, "@i")
    if hypernyms and synset.pos == "n":
        parts.append(sentence(f"{with_article(lemma)} is a kind of {hypernyms[0]}"))
    elif hypernyms and synset.pos == "v":
        parts.append(sentence(f"to {lemma} is a way to {hypernyms[0]}"))
    antonyms = related(synsets, synset, "!", lemma_index)
    if antonyms:
        parts.append(f"The opposite of {lemma} is {antonyms[0]}.")
    return " ".join(parts)


GREETINGS = [
    (["hello", "Hello", "hello there", "Hello there!", "hi", "Hi!", "hey", "Good morning", "good evening"],
     "Hello! I am a small dictionary model. Ask me what an English word means, for example: What does abate mean?"),
    (["Who are you?", "What are you?", "who are you", "What can you do?", "Tell me about yourself."],
     "I am a small language model trained on the WordNet dictionary of English. I can tell you what a word means, "
     "give an example of it, and name words with a similar or opposite meaning."),
    (["How are you?", "how are you", "How are you doing?"],
     "I am well, thank you. Ask me about a word, for example: What does serene mean?"),
    (["Thank you", "thanks", "Thanks!", "thank you very much"],
     "You are welcome. Ask me about another word whenever you like."),
    (["Goodbye", "bye", "Bye!", "see you later"],
     "Goodbye! Come back when you want to know what a word means."),
]


def chat_pairs(synsets, index, rng):
    pairs = []
    for lemma in sorted(index):
        by_pos = index[lemma]
        # The part of speech most used in the tagged texts (then the one with most senses) answers "What does X mean?".
        order = sorted(by_pos, key=lambda p: (-by_pos[p][1], -len(by_pos[p][0]), "nvar".index(p)))
        shown = {}
        for pos in order:
            senses = [synsets[k] for k in by_pos[pos][0] if k in synsets and not synsets[k].heldout]
            if senses:
                shown[pos] = senses
        if not shown:
            continue
        main_pos = next(iter(shown))
        main = shown[main_pos]
        word = next((w for w in main[0].words if w.lower() == lemma), lemma)
        answer = sentence(meaning(word, main[0]))
        if len(main) > 1:
            extra = main[1].gloss if main_pos != "v" or main[1].gloss.startswith("to ") else "to " + main[1].gloss
            answer += " " + sentence(f"it can also mean {extra}")
        examples = [e for s in main for e in s.examples if mentions(e, word)]
        if examples:
            answer_with_example = answer + f' For example: "{examples[0]}".'
        else:
            answer_with_example = answer
        question = rng.choice([f"What does {word} mean?", f"What does {word} mean?", f"What is the meaning of {word}?",
                               f"Define {word}.", f"What does the word {word} mean?"])
        pairs.append((question, answer_with_example))
        if rng.random() < 0.5:
            pairs.append((f"What does {word} mean?", answer_with_example))
        for pos in list(shown)[1:]:
            pairs.append((f"What does {word} mean as {with_article(POS_NAMES[pos])}?",
                          sentence(meaning(word, shown[pos][0]))))
        if examples:
            pairs.append((rng.choice([f"Give an example of {word}.", f"Use {word} in a sentence.",
                                      f"Give me an example sentence with {word}."]),
                          f'Here is an example: "{sentence(examples[rng.randrange(len(examples))])}"'))
        synonyms = [w for w in main[0].words if w.lower() != lemma]
        if synonyms:
            pairs.append((rng.choice([f"What is another word for {word}?", f"What is a synonym of {word}?"]),
                          f"Another word for {word} is {synonyms[0]}."))
        lemma_index = next((i for i, w in enumerate(main[0].words) if w.lower() == lemma), 0)
        antonyms = related(synsets, main[0], "!", lemma_index)
        if antonyms:
            pairs.append((f"What is the opposite of {word}?", f"The opposite of {word} is {antonyms[0]}."))
        if main_pos == "n":
            hypernyms = related(synsets, main[0], "@") + related(synsets, main[0], "@i")
            if hypernyms:
                pairs.append((f"What kind of thing is {with_article(word)}?",
                              sentence(f"{with_article(word)} is a kind of {hypernyms[0]}")))
    for questions, answer in GREETINGS:
        for _ in range(40):
            pairs.append((rng.choice(questions), answer))
    rng.shuffle(pairs)
    return pairs


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    wordnet_dir, out_dir = sys.argv[1:]
    synsets, index = {}, {}
    for pos, pos_file in POS_FILES.items():
        synsets.update(read_data(wordnet_dir, pos_file))
        for lemma, senses in read_index(wordnet_dir, pos_file, pos).items():
            index.setdefault(lemma, {})[pos] = senses
    for s in synsets.values():
        s.heldout = is_heldout(s.key)
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(2024)
    train, heldout = [], []
    for key in sorted(synsets):
        s = synsets[key]
        for i in range(len(s.words)):
            (heldout if s.heldout else train).append(entry(synsets, s, i))
    rng.shuffle(train)
    rng.shuffle(heldout)
    with open(os.path.join(out_dir, "pretrain.txt"), "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in train)
    with open(os.path.join(out_dir, "heldout.txt"), "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in heldout[:HELDOUT_LINES])
    pairs = chat_pairs(synsets, index, rng)
    with open(os.path.join(out_dir, "chat.jsonl"), "w", encoding="utf-8") as f:
        for user, assistant in pairs:
            f.write(json.dumps({"user": user, "assistant": assistant}, ensure_ascii=False) + "\n")
    words = set()
    for s in synsets.values():
        for text in s.words + s.examples + [s.gloss]:
            words.update(w.lower() for w in re.findall(r"[A-Za-z]+", text))
    with open(os.path.join(out_dir, "words.txt"), "w", encoding="utf-8") as f:
        f.writelines(w + "\n" for w in sorted(words))
    print(f"corpus: {len(train)} training entries, {len(heldout)} held-out entries (the first {HELDOUT_LINES} kept) "
          f"({sum(s.heldout for s in synsets.values())} of {len(synsets)} synsets), {len(pairs)} chat pairs, "
          f"{len(words)} words", file=sys.stderr)


if __name__ == "__main__":
    main()
