"""PsyDT-LoRA: fine-tune Qwen3 with LoRA on PsyDTCorpus and talk to the result.

The package is a ground floor and wings above it; imports only go down (tests/test_layout.py walks them).

Ground floor (this folder):
    errors    -- the one exception type users see, and the CLI edge that prints it
    files     -- atomic writes, reading user JSON / JSON Lines, local path checks
    cli       -- the Chinese --help both scripts share
    plots     -- PNG charts (loss curve; helpers for the report's chart)
    prompt    -- the one prompt rendering shared by training and inference
    hub       -- fetching the model and the dataset files (modelscope / huggingface); the probe before an
                 optional download (HF_ENDPOINT, MODELSCOPE_ENDPOINT / MODELSCOPE_DOMAIN and proxies honoured)
    models    -- loading tokenizer / base model / adapter
    run_record -- psydt_run.json: the typed record a finished run leaves beside its adapter
Wings, lowest first:
    data/       dialogues (the one dialogue type, validating, picking items), formats (every file format, detected),
                datasets (the dataset spec, mixing several, duplicates, the held-out split),
                sample_types (Sample, WholeDialogue, Tree and the SampleSource every holder of them is),
                samples (dialogues -> ids + reply-only labels, shared_prefix trees),
                packing (--packing rows of several samples, padding, the tree mask, the collator),
                sample_cache (built samples as a datasets.Dataset keyed by a fingerprint),
                pairs (the Preference of a context, a chosen and a rejected reply), preference_samples (pairs as
                shared-prefix trees: one prompt, every reply a leaf; their collator)
    safety/     rules (the crisis-language lexicon engine), resources (help lines and the texts built from them),
                screen (the one reply screen chat, serve and test use), session (the Safety a front end holds, built
                whole; DisabledSafety for --safety off),
                guard (Qwen3Guard-Gen, or the loaded model with its adapter off, beside the lexicon),
                guard_check (the start-up check a model layer passes before it is trusted; its cache),
                measurement (recall and false alarms of each layer; the frozen SOS-HL-1K split)
    train/      config (the typed settings of a run), training_data (datasets read, samples built), job (one run,
                step by step), lora (the model: LoRA, 4-bit), trainer (the Trainer, its arguments, loss wiring,
                callbacks), sample_dataset (the training set, --packing rows), progress (what the run says), signals
                and ranks (stopping on a signal, leaving together), checkpoints (what is whole, where a run resumes),
                tracking (SwanLab), outputs (adapter, run record, loss history), loss (the LM head at supervised positions),
                preference (DPO / IPO / ORPO / SimPO on trees, the reference log-probs once, its Trainer)
    inference/  settings (the programs' typed settings), runtime (the one Runtime chat, test, serve and export
                run over: model, adapter and record, generation settings, system prompt, Safety, context limit),
                generation (streaming, settings in words), conversation (one turn as every front end prepares
                it), chat (the terminal chat), openai_api (the OpenAI request and response shapes, errors),
                serving (the server, its admission and the chat page in web/)
    evaluation/ the batch run on the test split: batch_run (generate and score), metrics (reference scores,
                perplexity), report (Markdown, chart)
    judge/      LLM-as-judge through any OpenAI-compatible endpoint: endpoint (concurrency, retries, the answer
                cache), rubric (rubric judging; rubrics/*.json), pairwise (both orders), stats (bootstrap
                intervals), cpsycoune (turn-based items), crisis (the crisis check; data/crisis_zh.json),
                generate (generation through an endpoint), profiles (simulated clients; data/profiles_zh.json),
                session (one session with a simulated client), session_scores (judging whole sessions),
                simulation (the `simulate` run), report (the judge's report)
    export/     merged (the merged folder), template (the training defaults in the chat template), card (the
                model card), gguf (llama.cpp's converters), modelfile (Ollama), recipes (serving commands), run (the steps)
Top floor: train_cli, infer_cli, judge_cli -- the command-line programs (the scripts in LLM_fine_turning/ call them).

Imports sit at the top of each module, the package's own included. The exceptions, kept inside the functions
that use them so that `--help` and `--dry_run` start in a moment and an optional extra stays optional: torch,
transformers, peft, accelerate, datasets, deepspeed, bitsandbytes, swanlab, modelscope, huggingface_hub,
safetensors, matplotlib, tqdm, the metric libraries (jieba, nltk, sacrebleu, rouge_chinese), the serving extra
(fastapi, uvicorn, openai) and llama.cpp's converters.
"""
