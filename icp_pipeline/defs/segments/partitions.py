import dagster as dg

sites_partitions = dg.DynamicPartitionsDefinition(name="sites")
# One key per site x segment, e.g. `acme|mid-market-saas-teams`.
segments_partitions = dg.DynamicPartitionsDefinition(name="segments")
