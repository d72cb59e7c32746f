"""Monitoring: what the model sees and says in production, against what it was trained on.

Pure statistics sit apart from I/O so that the predictor, the window job,
the embedded runner and the tests share one definition of each figure.

- ``profile``: the reference profile of a model version (bins, ranges, category
  shares, score distribution), stored with the training run in MLflow;
- ``drift``: PSI, Jensen-Shannon, KS and chi-square on the profile's bins,
  feature quality, and the verdict with multiple-testing control;
- ``live``: the predictor's sliding-window counts and the Prometheus collector
  that computes the drift gauges on scrape;
- ``performance``: delayed-label join, measured performance and CBPE estimates;
- ``business``: churn rate, revenue at risk, campaign value, satisfaction;
- ``fairness``: positive-rate and recall gaps across segments;
- ``predlog``: the prediction log every figure starts from (records, writer, Parquet and PostgreSQL stores);
- ``labels``: delayed outcomes, read from CSV or Parquet files;
- ``windows``: windows of the prediction log, checked before statistics see them (the jobs that write
  reports are ``churnops.reports.window_jobs``, the drift report ``churnops.reports.drift``);
- ``page``: the embedded monitoring page (``churnops monitor serve``);
- ``dashboards``: Grafana dashboards as code, exported for the chart.
"""
