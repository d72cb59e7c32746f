"""Reports for people, generated from what a data directory holds (never written by hand).

- ``demo``: the demo's report, one self-contained HTML page with plots and its JSON twin: evaluation,
  SHAP summary, drift over time, the canary timeline, measured vs estimated performance, business
  impact and fairness (``write_demo_report(layout)``, ``churnops report demo``);
- ``compliance``: the document an auditor asks for about one model version: lineage and digests
  re-verified, gates, fairness at training and live, every rollout decision, the audit chains verified,
  the model card (``write_compliance_report(layout, model)``, ``churnops report compliance``);
- ``sources``: reading the registry, run artifacts, the prediction log, labels, rollouts and audit logs,
  each absent piece named rather than failed on;
- ``attributions``, ``overtime``, ``rollouts``: the figures the sections draw (the statistics themselves
  are ``churnops.monitoring``'s);
- ``plots``, ``html``, ``output``: drawing with Matplotlib's object API, the self-contained page, atomic writing.
"""
