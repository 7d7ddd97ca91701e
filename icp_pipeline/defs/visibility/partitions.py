import dagster as dg

# One key per org x question x model x location, e.g. `acme|q-1a2b3c|openai-gpt-4o-mini|US`.
question_runs_partitions = dg.DynamicPartitionsDefinition(name="question_runs")
orgs_partitions = dg.DynamicPartitionsDefinition(name="orgs")
