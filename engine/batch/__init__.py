"""`python -m engine batch JOB.jsonl --out DIR`: one command that annotates a mesh library on Ray.

The pieces, each with one job: `job` parses and checks the JSONL job and hashes each request; `ledger`
keeps `DIR/results.jsonl` and decides what is already done (resume, idempotence); `worker` runs one task
through `engine.pipeline.Session` and writes the same files the CLI writes; `runner` spreads tasks over Ray
actors that load the models once; `progress` draws the bar and the final table; `blend` writes .blend
files through the bpy wheel; `cli` is the argparse front. Only `runner` imports Ray, and only when called.
"""
