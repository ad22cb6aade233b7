"""The architecture search of NAS-FPN (Ghiasi et al., CVPR 2019, Sec. 3).

`runner.search(config, model_dir)` runs it. The life of one sample, step
by step, with the module of each step:

1. oracle.py      A tuner (`SearchTuner`: this process, or a worker)
                  asks KerasTuner's `ControllerOracle` for a trial; the
                  oracle only translates (a trial is a sample, its id the
                  sample index) and asks the scheduler.
2. scheduler.py   `Scheduler.assign` hands out the next sample of the
                  current batch (`batch.py`): actions the policy sampled
                  (`controller.py`, `policy.py`), a `NeckSpec` through the
                  search space (`arch/space.py`). A spec whose canonical
                  hash is rated already (`history.RewardCache`) is recorded
                  as cached there and never rated again.
3. rater.py       The tuner rates the spec (`results.rate`): a result an
                  earlier run stored in `trials/trial_N/result.json` is
                  reused; otherwise a `Rater` makes one, the proxy
                  (`proxy.ProxyTask`: a short training, held-out AP, with
                  costs folded in by `objective.py`) or the supernet
                  (`supernet/rater.py`: shared weights, no training), and
                  the result is stored before the scheduler hears of it.
4. rungs.py       With successive halving, the proxy trains the child
                  rung by rung (`rungs.climb`), stopping it at a rung
                  unless it is in the top 1/eta of the children rated
                  there; the rungs reached go into the result.
5. history.py     The oracle ends the trial; `Scheduler.finish` turns the
                  stored result into a `SampleRecord`, appended to
                  `history.jsonl` (`search_dir.py` names the directory's
                  files) and added to the reward cache; `report.py` logs a
                  progress line.
6. controller.py  When every sample of the batch has its reward, the
                  policy learns from them (PPO or REINFORCE; random search
                  learns nothing), is checkpointed
                  (`SearchDir.save_policy`) and samples the next batch;
                  `report.py` writes the best and top specs, the figure
                  and the scalars.

After the last sample, a two-stage search (`search.supernet.finalists`)
trains the supernet's best few specs as standalone proxy children
(`finalists.py`) and answers with the best of them.

A rerun resumes from `history.jsonl` and the controller checkpoint
(`Scheduler.restore`, checked by `resume.py`); `warm_start.py` starts a
search with the rewards of earlier ones.
"""
