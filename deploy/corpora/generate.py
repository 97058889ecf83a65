#!/usr/bin/env python3
"""Writes fedmoe's three synthetic demo corpora: finance, IT support and contracts.

Every sentence comes from templates and word lists in this file, filled in by a seeded
generator, so the output is the same on every run and machine (tests check that). The text is
invented for fedmoe and carries no third-party rights; it is released with the project.

Each domain directory gets a pre-training text file (paragraphs separated by blank lines) and a
JSONL file of supervised prompt/response pairs.

  deploy/corpora/generate.py [OUT_DIR]   (default: the directory of this script)
"""
import json
import os
import random
import sys

COMPANIES = ["Northwind Traders", "Blue Harbor Logistics", "Alder & Finch", "Kestrel Foods",
             "Orion Metalworks", "Pinecrest Health", "Larkspur Media", "Granite Peak Energy",
             "Silverline Retail", "Meridian Optics", "Cobalt Freight", "Juniper Labs"]
CURRENCIES = ["EUR", "USD", "GBP", "CHF"]
ITEMS = ["consulting services", "cloud hosting", "office furniture", "freight charges",
         "software licences", "maintenance contract", "catering", "laboratory supplies",
         "marketing campaign", "legal review"]
ACCOUNTS = ["accounts payable", "accounts receivable", "accrued expenses", "deferred revenue",
            "cost of goods sold", "operating expenses", "prepaid expenses"]

SYSTEMS = ["VPN client", "email gateway", "laptop", "printer on floor 3", "HR portal",
           "build server", "Wi-Fi in meeting room B", "password manager", "CRM", "backup job"]
SYMPTOMS = ["times out after login", "shows error 0x80070005", "is very slow since Monday",
            "cannot connect to the network", "rejects valid credentials",
            "crashes when opening attachments", "reports a full disk", "keeps asking for MFA"]
# (past tense for ticket notes, imperative for advice)
ACTIONS = [("restarted the service", "restart the service"),
           ("cleared the local cache", "clear the local cache"),
           ("reset the user's password", "reset the user's password"),
           ("reinstalled the driver", "reinstall the driver"),
           ("extended the disk by 50 GB", "extend the disk by 50 GB"),
           ("renewed the certificate", "renew the certificate"),
           ("rolled back the last update", "roll back the last update"),
           ("re-enrolled the device in MDM", "re-enroll the device in MDM")]
PRIORITIES = ["P1", "P2", "P3", "P4"]

PARTIES = ["the Supplier", "the Customer", "the Licensee", "the Licensor", "the Contractor",
           "the Client"]
OBLIGATIONS = ["keep all Confidential Information strictly confidential",
               "deliver the Services in accordance with the Service Levels",
               "pay each undisputed invoice within thirty (30) days",
               "maintain insurance with a reputable insurer",
               "comply with all applicable data protection laws",
               "notify the other party of any breach without undue delay"]
CLAUSES = ["Confidentiality", "Limitation of Liability", "Termination", "Governing Law",
           "Force Majeure", "Data Protection", "Intellectual Property", "Payment Terms"]
LAWS = ["the laws of England and Wales", "the laws of the State of New York",
        "Swiss law", "the laws of Germany"]


def amount(rng):
    return f"{rng.randint(120, 98000):,}.{rng.randint(0, 99):02d}"


def finance_paragraph(rng):
    company, item = rng.choice(COMPANIES), rng.choice(ITEMS)
    currency, number = rng.choice(CURRENCIES), rng.randint(10000, 99999)
    day, month = rng.randint(1, 28), rng.randint(1, 12)
    lines = [
        f"Invoice INV-{number} from {company} for {item} totals {currency} {amount(rng)}.",
        f"The invoice is dated 2026-{month:02d}-{day:02d} and is due within "
        f"{rng.choice([14, 30, 45, 60])} days.",
        f"Post the amount to {rng.choice(ACCOUNTS)} and match it against purchase order "
        f"PO-{rng.randint(1000, 9999)}.",
    ]
    if rng.random() < 0.5:
        lines.append(f"VAT of {rng.choice([7, 8.1, 19, 20])}% applies; the net amount is "
                     f"{currency} {amount(rng)}.")
    if rng.random() < 0.4:
        lines.append(f"Quarterly revenue rose {rng.randint(1, 19)}% while operating expenses "
                     f"fell {rng.randint(1, 9)}%, so the margin improved.")
    return " ".join(lines)


def finance_example(rng):
    company, number, currency = rng.choice(COMPANIES), rng.randint(10000, 99999), rng.choice(CURRENCIES)
    total = amount(rng)
    days = rng.choice([14, 30, 45, 60])
    prompt = (f"Summarise invoice INV-{number}: {company}, {rng.choice(ITEMS)}, {currency} "
              f"{total}, net {days} days.\n")
    response = f"Invoice INV-{number} from {company}: {currency} {total}, due in {days} days."
    return {"prompt": prompt, "response": response}


def support_paragraph(rng):
    ticket, system = rng.randint(100000, 999999), rng.choice(SYSTEMS)
    lines = [
        f"Ticket #{ticket} ({rng.choice(PRIORITIES)}): the {system} {rng.choice(SYMPTOMS)}.",
        f"The user reported it at {rng.randint(7, 18):02d}:{rng.randint(0, 59):02d} and "
        f"{rng.choice(['could not work', 'found a workaround', 'escalated to the manager'])}.",
        f"Support {rng.choice(ACTIONS)[0]} and asked the user to try again.",
    ]
    if rng.random() < 0.6:
        lines.append(f"Resolution confirmed; the ticket was closed after "
                     f"{rng.randint(1, 72)} hours.")
    else:
        lines.append("The issue persists, so the ticket moves to the second-level team.")
    return " ".join(lines)


def support_example(rng):
    system, symptom, action = rng.choice(SYSTEMS), rng.choice(SYMPTOMS), rng.choice(ACTIONS)[1]
    return {"prompt": f"User says: the {system} {symptom}. What should support do first?\n",
            "response": f"Check the {system}; if the fault is confirmed, {action} and ask the "
                        f"user to retry."}


def contract_paragraph(rng):
    clause, party = rng.choice(CLAUSES), rng.choice(PARTIES)
    number = f"{rng.randint(1, 19)}.{rng.randint(1, 9)}"
    lines = [
        f"{number} {clause}. {party.capitalize()} shall {rng.choice(OBLIGATIONS)}.",
        f"This obligation survives termination of this Agreement for "
        f"{rng.choice(['two (2)', 'three (3)', 'five (5)'])} years.",
    ]
    if clause == "Governing Law" or rng.random() < 0.3:
        lines.append(f"This Agreement is governed by {rng.choice(LAWS)}.")
    if rng.random() < 0.4:
        lines.append(f"Neither party's aggregate liability shall exceed "
                     f"{rng.choice(['the fees paid in the preceding twelve (12) months', 'EUR 1,000,000', 'twice the annual fees'])}.")
    return " ".join(lines)


def contract_example(rng):
    party, obligation = rng.choice(PARTIES), rng.choice(OBLIGATIONS)
    return {"prompt": f"Draft a clause obliging {party} to {obligation}.\n",
            "response": f"{party.capitalize()} shall {obligation}."}


DOMAINS = {
    "finance": (finance_paragraph, finance_example),
    "it_support": (support_paragraph, support_example),
    "contracts": (contract_paragraph, contract_example),
}
PARAGRAPHS = 900
EXAMPLES = 300


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    for seed, (name, (paragraph, example)) in enumerate(sorted(DOMAINS.items())):
        rng = random.Random(1000 + seed)
        directory = os.path.join(out, name)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "documents.txt"), "w", encoding="utf-8") as text:
            text.write("\n\n".join(paragraph(rng) for _ in range(PARAGRAPHS)) + "\n")
        with open(os.path.join(directory, "instructions.jsonl"), "w", encoding="utf-8") as jsonl:
            for _ in range(EXAMPLES):
                jsonl.write(json.dumps(example(rng), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
