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

Modules: ``config`` (the YAML), ``instructions`` (default instructions and templates),
``categories`` (Objects365 list, per-item plan, shards), ``manifest`` (run folder, JSONL records,
atomic images, lock), ``records`` (kept/dropped records, drop reasons), ``text`` (writers,
re-captioner, answer parsing), ``models`` (loading every model), ``filters`` (box rules and
reward-service filters), ``stages`` (what a stage is), ``stage1`` / ``stage2`` (the paper's two
stages), ``runner`` (ordering, resume, shards, progress), ``report`` (dataset, summary, contact
sheet), ``merge`` (shards), ``tiny`` (tiny models and config for ``psr make-tiny``), ``cli``.
"""
