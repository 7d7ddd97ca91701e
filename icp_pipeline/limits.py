"""Documented limits on what an org or site file may ask for (see README, "Limits").

Hard limits reject the file. The runs-per-cycle limit can be passed deliberately with
`icp-pipeline org load --allow-large`, after the estimated cost is shown.
"""

# Files: read at most this many bytes (an org or site file is a few KB; a site file with long pages
# stays well under it).
MAX_FILE_BYTES = 1_000_000
# YAML structure: nesting depth and digits of one integer (Python refuses to parse more than 4,300).
MAX_YAML_DEPTH = 20
MAX_INT_DIGITS = 18

# Org files.
MAX_QUESTIONS = 1_000
MAX_MODELS = 20
MAX_COMPETITORS = 50
MAX_TERMS_PER_COMPANY = 20  # aliases, and domains, per company

# Runs per cycle (questions x models x locations x samples) above which `org load` refuses the file
# unless --allow-large is given. 4,000 runs is 8,000 model calls (an answer and a claims call each).
MAX_RUNS_PER_CYCLE = 4_000

# Site files and segment prompts.
MAX_PAGES = 100
MAX_SEGMENTS = 50
# Characters of one prompt sent to a model for a segment build, the segment discovery or the site
# comparison (about 25,000 tokens); pages beyond it are cut, and the prompt says so.
MAX_PROMPT_CHARS = 100_000
