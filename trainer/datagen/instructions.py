"""Default instructions for the language models and the deterministic templates (all overridable in YAML).

Placeholders: ``{subjects}`` (e.g. "dog, cup"), ``{prompt}`` (the scene prompt), ``{edit}`` (the
edit instruction, or empty). Every answer is asked for on one labelled line (``Prompt:``,
``Edit:``, ``Caption:``), which is what the parser accepts.
"""

from __future__ import annotations

SCENE = (
    "Write a prompt for a text-to-image model: one natural, concrete scene, in one sentence of at most "
    "40 words, that shows all of these subjects together: {subjects}. Name each subject with exactly its "
    "word from that list. Answer with a single line that starts with \"Prompt:\"."
)

_EDIT = (
    "Here is an image description: \"{prompt}\". Write one instruction for an image-editing model that "
    "{change}. Refer to subjects only by these words: {subjects}. Answer with a single line that starts "
    "with \"Edit:\"."
)
EDIT = {
    "attribute": _EDIT.replace("{change}", "changes an attribute (colour, material, clothing or an accessory) of one or more subjects"),
    "action": _EDIT.replace("{change}", "changes what the subjects do (their pose, action or interaction)"),
    "background": _EDIT.replace("{change}", "replaces the background or setting and keeps every subject"),
    "complex": _EDIT.replace("{change}", "changes an attribute, an action and the background at once"),
}

CAPTION = (
    "The image shows these subjects: {subjects}. Describe the image in one sentence, as a prompt for "
    "an image generator: what the subjects do, where they are and what surrounds them. Refer to each "
    "subject only by its word ({subjects}) and do not describe how the subjects look (no colour, breed, "
    "texture, material or shape of a subject).{edit} Answer with a single line that starts with \"Caption:\"."
)
# After the rule above, so it wins: an attribute edit changed how a subject looks, and the
# instruction is the only place that change can be learnt from (the references show the old look).
CAPTION_EDIT_CONTEXT = (
    " The image was made by the edit \"{edit}\": do state what that edit changed, even where it "
    "changed how a subject looks."
)

# Template writer (``writer.kind: template``): deterministic, offline, names every subject by construction.
SCENE_TEMPLATES = ["a photo of {subjects} {place}", "{subjects} {place}, natural light"]
PLACES = [
    "on a wooden table", "in a sunny garden", "on a city street", "in a cosy living room", "on a sandy beach",
    "in a snowy park", "on a kitchen counter", "in a forest clearing",
]
EDIT_TEMPLATES = {
    "attribute": ["make the {subject} {colour}", "give the {subject} a {colour} ribbon"],
    "action": ["turn the {subject} to face the {other}", "tilt the {subject} towards the {other}"],
    "background": ["set the scene {place}"],
    "complex": ["make the {subject} {colour}, turn it to face the {other} and set the scene {place}"],
}
COLOURS = ["red", "blue", "green", "golden", "white"]

# Personalisation prompt for a subject's new scene (``{category}``, ``{place}``).
REFERENCE_PROMPT = "a photo of the {category} {place}, seen from another angle"
