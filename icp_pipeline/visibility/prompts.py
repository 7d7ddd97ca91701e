"""Prompts sent to the assistants. Kept plain so an answer is what a buyer would see."""

ANSWER_SYSTEM = "You are a helpful assistant. Answer the user's question directly and name concrete products."


def answer_prompt(question: str, country: str | None) -> str:
    if not country:
        return question
    return f"{question}\n\n(I am based in the country with ISO code {country}; answer for that market.)"


CLAIMS_SYSTEM = (
    "You extract factual or evaluative claims about companies from an AI assistant's answer. "
    "Return JSON only."
)


def claims_prompt(answer: str, company_names: list[str], citations: list[str]) -> str:
    cited = "\n".join(f"- {url}" for url in citations) or "- (none)"
    return (
        "Extract every claim the answer makes about a company. For each claim give: `text` (the claim, "
        "quoted or closely paraphrased), `company` (the company it is about), `sentiment` (positive, neutral "
        "or negative, from the company's point of view) and `supporting_urls` (only URLs from the list "
        "below that support the claim; an empty list when none does).\n\n"
        f"Companies we track: {', '.join(company_names)}\n\nURLs cited in the answer:\n{cited}\n\n"
        f"Answer:\n<<<\n{answer}\n>>>\n\n"
        'Reply with JSON: {"claims": [{"text": ..., "company": ..., "sentiment": ..., "supporting_urls": [...]}]}'
    )
