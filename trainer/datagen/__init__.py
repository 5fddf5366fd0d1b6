"""``psr datagen``: multi-subject training data from single-subject models (the PSR paper's pipeline).

Stages, each with a per-item JSONL manifest in ``OUT/manifests/`` (``stages.STAGES``)::

    prompts     categories + task per item (from the run seed); a language model writes a scene
                prompt naming every subject (and, for edit tasks, an edit instruction)
    targets     a text-to-image diffusers pipeline draws the multi-subject target; aesthetic floor
    detect      an open-vocabulary detector finds each subject once; crops
    references  a single-subject personalisation model redraws each crop in a new scene;
                identity floor / copy-paste ceiling against the crop
    edit        task diversity: an editing model edits the target (attribute/action/background/
                complex); position items get their relation from the boxes
    caption     a vision-language model re-captions the target without describing appearance
    write       ``OUT/dataset.json`` (``trainer.dataset``'s format), summary, contact sheet

Modules: ``config`` (the YAML), ``categories`` (Objects365 list, per-item sampling),
``manifest`` (run folder, JSONL records, atomic images, lock), ``text`` (language-model writers
and answer parsing), ``models`` (loading every model), ``filters`` (boxes and reward-service
filters), ``stages`` and ``edit_stages`` (what each stage does), ``runner`` (ordering, resume,
shards, progress), ``report`` (summary and contact sheet), ``merge`` (shards), ``cli``.
"""
