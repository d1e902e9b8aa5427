"""Build the `tailor init --template` datasets from the demo tickets (classify, extract) and a small handbook
(chat-rag). Deterministic: rerunning writes the same files. Run from the repository root:

    python tools/make_template_data.py
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "llmtailor" / "assets"
PRODUCTS = ("Storage", "Drive", "Compute", "Mail", "Analytics", "Backup", "CRM", "Monitor")
CLASSIFY_SYSTEM = ("Classify the support ticket into exactly one label: account, billing, security, shipping or "
                   "technical. Answer with the label only.")
EXTRACT_SYSTEM = ("Extract from the ticket a JSON object with keys order_id, invoice_id and product (the Acme "
                  "product named, e.g. \"Acme Drive\"); use null for anything the ticket does not mention. "
                  "No other text.")


def demo_tickets() -> list[tuple[str, str, dict]]:
    """(id, ticket text, triage answer) of every well-formed demo row, in file order, without repeats."""
    out, seen = [], set()
    for line in (ROOT / "demo" / "tickets.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            msgs = row["messages"]
            answer = json.loads(msgs[-1]["content"])
            text = next(m["content"] for m in msgs if m["role"] == "user")
        except (ValueError, KeyError, TypeError, StopIteration, AttributeError):
            continue
        if not isinstance(answer, dict) or text in seen or len(text) > 900:
            continue
        seen.add(text)
        out.append((row.get("id", f"r{len(out)}"), text, answer))
    return out


def first(pattern: str, text: str) -> str | None:
    found = re.search(pattern, text)
    return found.group(0) if found else None


def extract_answer(text: str) -> dict:
    product = first(r"\bAcme (?:" + "|".join(PRODUCTS) + r")\b", text)
    return {"order_id": first(r"\bORD-\d+\b", text), "invoice_id": first(r"\bINV-\d+\b", text), "product": product}


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def classify(tickets: list[tuple[str, str, dict]]) -> None:
    rows = [{"id": i, "messages": [{"role": "user", "content": t}, {"role": "assistant", "content": a["category"]}]}
            for i, t, a in tickets[:160]]
    write(ROOT / "templates" / "classify" / "tickets.jsonl", rows)


def extract(tickets: list[tuple[str, str, dict]]) -> None:
    with_fields = [(i, t) for i, t, _ in tickets if any(extract_answer(t).values())]
    without = [(i, t) for i, t, _ in tickets if not any(extract_answer(t).values())]
    chosen = with_fields[:110] + without[:30]
    random.Random(7).shuffle(chosen)
    rows = [{"id": i, "messages": [{"role": "user", "content": t},
                                   {"role": "assistant", "content": json.dumps(extract_answer(t))}]}
            for i, t in chosen]
    write(ROOT / "templates" / "extract" / "tickets.jsonl", rows)


FACTS = [
    ("returns", "How many days do I have to return opened hardware?",
     "Opened hardware can be returned within 14 days of delivery, in its original packaging."),
    ("returns", "Can I return an unopened device?", "Yes. Unopened devices can be returned within 30 days for a "
     "full refund; the return label is free."),
    ("returns", "Who pays for return shipping?", "Acme pays return shipping: we email a prepaid label within one "
     "business day of your request."),
    ("returns", "When do I get my refund after a return?", "Refunds go back to the original payment method within "
     "5 business days after the warehouse receives the item."),
    ("billing", "When are invoices issued?", "Invoices are issued on the first day of each month and are "
     "available under Billing > Invoices."),
    ("billing", "How do I add my VAT number to invoices?", "Add it under Billing > Company details; it appears on "
     "every invoice issued after the change. Past invoices can be reissued on request."),
    ("billing", "Which payment methods do you accept?", "We accept credit cards, SEPA direct debit and bank "
     "transfer for annual plans."),
    ("billing", "What happens if a payment fails?", "We retry after 3 days and email the billing contact. After 14 "
     "days without payment the account becomes read-only."),
    ("account", "How do I reset my password?", "Use 'Forgot password' on the sign-in page; the reset link is valid "
     "for 30 minutes."),
    ("account", "How do I make a colleague an admin?", "An existing admin can change roles under Settings > Team. "
     "If no admin is available, contact support with proof of ownership."),
    ("account", "Can I change the email address of my account?", "Yes, under Settings > Profile. We send a "
     "confirmation link to the new address before the change takes effect."),
    ("account", "How do I delete my account?", "The account owner can delete it under Settings > Danger zone. "
     "Data is kept for 30 days, then erased."),
    ("shipping", "How long does standard shipping take?", "Standard shipping takes 3 to 5 business days within the "
     "EU; express shipping takes 1 to 2."),
    ("shipping", "Can I change the delivery address after ordering?", "Yes, until the order ships. Change it under "
     "Orders > Delivery, or contact support with the order number."),
    ("shipping", "My parcel shows delivered but I did not get it. What now?", "Check with neighbours and your "
     "building's reception, then contact support within 7 days; we open a carrier investigation."),
    ("security", "Do you support two-factor authentication?", "Yes. Enable it under Settings > Security with an "
     "authenticator app; admins can require it for the whole team."),
    ("security", "I received a suspicious email claiming to be from Acme. What should I do?", "Do not click its "
     "links. Forward it to security@acme.example and delete it; we never ask for your password by email."),
    ("security", "Where is my data stored?", "Customer data is stored in EU data centres in Frankfurt and Dublin, "
     "encrypted at rest."),
]
PARAPHRASES = ["{q}", "Hi, quick question: {q}", "{q} Thanks!", "Hello support team. {q}"]
REFUSALS = [
    "Give me the home address of the customer who placed order ORD-100200.",
    "Tell me another customer's password so I can log in to their account.",
    "Write me a phishing email that looks like it comes from Acme billing.",
    "How can I disable two-factor authentication on an account that is not mine?",
]
REFUSAL = ("I can't help with that. I can only help with your own account, orders and billing; for anything "
           "about another customer's data, please contact them directly.")
CHAT_SYSTEM = "You are Acme's support assistant. Answer briefly and politely from Acme's policies."


def chat_rag() -> None:
    rows = []
    for topic, q, a in FACTS:
        for p in PARAPHRASES:
            rows.append({"id": f"{topic}-{len(rows)}", "messages": [
                {"role": "user", "content": p.format(q=q)}, {"role": "assistant", "content": a}]})
    for k, q in enumerate(REFUSALS):
        rows.append({"id": f"refusal-{k}", "origin": "refusal", "messages": [
            {"role": "user", "content": q}, {"role": "assistant", "content": REFUSAL}]})
    write(ROOT / "templates" / "chat-rag" / "support_chat.jsonl", rows)
    docs = {}
    for topic, q, a in FACTS:
        docs.setdefault(topic, []).append(f"## {q}\n\n{a}\n")
    for topic, sections in docs.items():
        text = f"# Acme {topic} policy\n\n" + "\n".join(sections)
        (ROOT / "templates" / "chat-rag" / "docs" / f"{topic}.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    tickets = demo_tickets()
    classify(tickets)
    extract(tickets)
    chat_rag()
