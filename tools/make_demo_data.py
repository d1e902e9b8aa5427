#!/usr/bin/env python3
"""Generate the llmtailor demo dataset: Acme Cloud support-ticket triage (ticket in, JSON out).

Deterministic (fixed seeds, stdlib only). Writes two files into --out (default: llmtailor/assets/demo):

* ``tickets.jsonl``      chat rows ``{"id", "messages": [system, user, assistant]}`` plus a few Alpaca rows
                         and deliberate problems for the data-curation steps (see PLAN below).
* ``ticket.schema.json`` JSON Schema (draft 2020-12) of the assistant answer.

Labelling rules (what the model must learn):

* category: billing | technical | account | shipping | security; team is a fixed function of category.
* priority from cue sentences: urgent (production down / outage / all users affected / data breach),
  high (cannot work / blocked / deadline today), medium (minor inconvenience, workaround, not blocking),
  low (just a question, no rush).
* summary: the ticket's subject line verbatim, lower-cased, trailing punctuation removed.

Usage: python tools/make_demo_data.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

SEED = 20240611
SHUFFLE_SEED = 7

SYSTEM = (
    "You are the ticket triage assistant of Acme Cloud. Read the ticket and answer with one JSON object "
    "with keys category, priority, team, summary. No other text."
)

TEAMS = {
    "billing": "finance",
    "technical": "engineering",
    "account": "customer-success",
    "shipping": "logistics",
    "security": "trust-and-safety",
}
CATEGORIES = list(TEAMS)
PRIORITIES = ["low", "medium", "high", "urgent"]
TRAILING_PUNCT = ".,;:!? \t"

# Valid rows per category and priority (low, medium, high, urgent); 66 per category -> 330 valid rows.
PLAN = {
    "billing": (16, 22, 18, 10),
    "technical": (10, 18, 20, 18),
    "account": (16, 22, 20, 8),
    "shipping": (16, 22, 18, 10),
    "security": (10, 14, 18, 24),
}
N_ALPACA = 10  # of the valid rows, written in Alpaca format (2 per category)
N_PII = 25  # of the valid chat rows, with personal data in the ticket body
N_EXACT_DUP = 12
N_NEAR_DUP = 12
MAX_JACCARD = 0.7  # valid rows are kept pairwise below this word-set similarity, so near-dups are only the planted ones

# ---------------------------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------------------------

PRODUCTS = [
    "Acme Storage",
    "Acme Compute",
    "Acme Analytics",
    "Acme Mail",
    "Acme Backup",
    "Acme CRM",
    "Acme Drive",
    "Acme Monitor",
]
PLANS = ["Starter", "Team", "Business", "Enterprise", "Pro"]
REGIONS = ["eu-west-1", "eu-central-1", "us-east-2", "us-west-1", "ap-south-1", "ap-northeast-1"]
ERRORS = [
    "HTTP 500 errors",
    "HTTP 502 errors",
    "HTTP 503 errors",
    "timeouts after 30 seconds",
    "error E-4012",
    "error E-1107",
    "connection reset errors",
    "HTTP 429 errors",
]
BROWSERS = ["Chrome", "Firefox", "Safari", "Edge"]
MOBILE = ["iOS 17", "iOS 18", "Android 14", "Android 15", "iPadOS"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
ITEMS = [
    "Edge Gateway appliances",
    "hardware security keys",
    "backup seed drives",
    "rack-mount storage units",
    "replacement power supplies",
    "network switches",
    "starter kits",
    "barcode scanners",
]
CARRIERS = ["UPS", "FedEx", "DHL", "USPS", "GLS"]
COUNTRIES = [
    "Germany",
    "Canada",
    "Brazil",
    "Japan",
    "Australia",
    "Mexico",
    "Norway",
    "India",
    "South Africa",
    "Poland",
    "Spain",
    "Singapore",
]
TIMES = ["this morning", "yesterday evening", "about an hour ago", "9:40 today", "last night", "Monday"]

FIRST_NAMES = [
    "Anna",
    "Tom",
    "Maria",
    "James",
    "Priya",
    "Lukas",
    "Sofia",
    "Daniel",
    "Aisha",
    "Kenji",
    "Elena",
    "Marco",
    "Olivia",
    "Noah",
    "Fatima",
    "Jonas",
    "Chloe",
    "Rafael",
    "Ingrid",
    "Samuel",
]
LAST_NAMES = [
    "Berg",
    "Fischer",
    "Lopez",
    "Walker",
    "Sharma",
    "Novak",
    "Rossi",
    "Kim",
    "Okafor",
    "Tanaka",
    "Dubois",
    "Meyer",
    "Hansen",
    "Silva",
    "Brown",
    "Kowalski",
]
EMAIL_DOMAINS = ["example.com", "example.org", "example.net", "northwind.example", "contoso.example"]
TEST_CARDS = ["4111 1111 1111 1111", "5500 0000 0000 0004", "4012 8888 8888 1881"]

# ---------------------------------------------------------------------------------------------------------------
# Templates: subjects (alternatives), facts (1-2 are used, in order), allowed priorities (l, m, h, u)
# ---------------------------------------------------------------------------------------------------------------

T = dict  # short alias for readability

TEMPLATES: dict[str, list[dict]] = {
    "billing": [
        T(
            subjects=[
                "Charged twice for invoice {invoice}",
                "Duplicate charge on invoice {invoice}",
                "Double payment taken for {invoice}",
            ],
            facts=[
                "Our card was charged {amount} twice for invoice {invoice} on {date}.",
                "The bank statement shows two identical payments of {amount} for the same invoice.",
                "We only expected one payment for our {plan} plan this month.",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "Wrong amount on invoice {invoice}",
                "Invoice {invoice} total looks incorrect",
                "Incorrect price on our {plan} invoice",
            ],
            facts=[
                "Invoice {invoice} shows {amount} but our {plan} plan should cost {amount2}.",
                "The invoice lists {n} seats although we only have {m} users.",
                "The tax line on the invoice seems to be calculated twice.",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "Update the credit card on file",
                "How do I change our payment card?",
                "New payment method for account {account_id}",
            ],
            facts=[
                "Our company card expires at the end of the month and we need to add a new one.",
                "I do not see where to replace the card used for the {plan} plan.",
                "We want to pay with a different corporate card from {date} on.",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "Add our VAT number to invoices",
                "VAT ID missing on invoice {invoice}",
                "Tax ID needed on future invoices",
            ],
            facts=[
                "Our finance department needs the VAT number printed on every invoice.",
                "Invoice {invoice} was issued without our tax ID.",
                "Please also correct the company address on the billing profile.",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "Can we switch to annual billing?",
                "Annual plan pricing for {plan}",
                "Question about yearly invoicing",
            ],
            facts=[
                "We are on monthly billing for the {plan} plan and want to pay yearly instead.",
                "Is there a discount if we pay for {n} seats annually?",
                "How would the remaining days of this month be credited?",
            ],
            prios="lm",
        ),
        T(
            subjects=[
                "Payment declined for {plan} renewal",
                "Renewal payment failed on {date}",
                "Card declined for invoice {invoice}",
            ],
            facts=[
                "Our renewal payment of {amount} was declined on {date}.",
                "The bank confirms the card is valid, so we do not know why it failed.",
                "We got an email that the service will be paused if the invoice stays open.",
            ],
            prios="mhu",
        ),
        T(
            subjects=[
                "Account suspended for non-payment",
                "Service paused although invoice {invoice} is paid",
                "Workspace locked by billing",
            ],
            facts=[
                "Our account was suspended on {date} although invoice {invoice} was paid.",
                "We paid {amount} by bank transfer last week and have the confirmation.",
                "The dashboard says the subscription is past due.",
            ],
            prios="hu",
        ),
        T(
            subjects=[
                "Downgrade from {plan} to {plan2}",
                "Change our plan to {plan2}",
                "Reduce our subscription to {plan2}",
            ],
            facts=[
                "We would like to move from the {plan} plan to {plan2} at the next renewal.",
                "Please confirm whether our data is kept after the downgrade.",
                "We only use {n} seats now.",
            ],
            prios="lm",
        ),
        T(
            subjects=[
                "Question about proration after upgrade",
                "How is the upgrade to {plan2} charged?",
                "Prorated charge on invoice {invoice}",
            ],
            facts=[
                "We upgraded from {plan} to {plan2} on {date} and were charged {amount}.",
                "I would like to understand how the prorated amount was calculated.",
                "Is the credit for the old plan applied to the next invoice?",
            ],
            prios="lm",
        ),
        T(
            subjects=[
                "Missing receipt for payment on {date}",
                "Need a receipt for {amount}",
                "Receipt for invoice {invoice} not received",
            ],
            facts=[
                "We paid {amount} on {date} but never received a receipt.",
                "Our accountant needs the receipt for the expense report.",
                "The billing page lists the payment but the download link gives an empty file.",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "Unexpected overage charge of {amount}",
                "Overage fee on invoice {invoice}",
                "Why were we billed extra for {product}?",
            ],
            facts=[
                "Invoice {invoice} contains an overage charge of {amount} for {product}.",
                "Our usage dashboard shows we stayed under the limit of the {plan} plan.",
                "Nobody on the team changed the usage settings last month.",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "Refund for unused seats",
                "Refund request for {n} removed seats",
                "Credit for seats we never used",
            ],
            facts=[
                "We removed {n} seats on {date} but were billed for the full month.",
                "Please refund the difference of {amount} to our card.",
                "Can the amount be credited to the next invoice instead?",
            ],
            prios="lmh",
        ),
    ],
    "technical": [
        T(
            subjects=[
                "{product} API returns errors in {region}",
                "{error_cap} from the {product} API",
                "API calls failing in {region}",
            ],
            facts=[
                "Calls to the {product} API in {region} fail with {error} since {time}.",
                "Requests from our backend get {error} about half of the time.",
                "We did not change anything in our integration.",
            ],
            prios="mhu",
        ),
        T(
            subjects=[
                "Dashboard not loading in {browser}",
                "{product} dashboard shows a blank page",
                "Blank screen after login to {product}",
            ],
            facts=[
                "The {product} dashboard stays blank in {browser} after login.",
                "Clearing the cache and trying a private window did not help.",
                "The browser console shows a script error.",
            ],
            prios="lmhu",
        ),
        T(
            subjects=[
                "Slow queries in {product}",
                "Reports in {product} take minutes to load",
                "Performance dropped after the last update",
            ],
            facts=[
                "Reports that used to load in two seconds now take over {n} seconds.",
                "The slowdown started after the update on {date}.",
                "Only large workspaces seem to have the problem.",
            ],
            prios="lmhu",
        ),
        T(
            subjects=[
                "Webhook deliveries failing for {product}",
                "Webhooks not arriving since {date}",
                "Webhook retries stuck",
            ],
            facts=[
                "Our endpoint stopped receiving webhooks from {product} on {date}.",
                "The delivery log shows {error} for every attempt.",
                "Our endpoint works fine when we test it manually.",
            ],
            prios="mhu",
        ),
        T(
            subjects=[
                "Cannot connect to {product} from our office network",
                "Connection timeouts to {region} endpoint",
                "{product} unreachable over VPN",
            ],
            facts=[
                "Connections to {product} time out from our office network but work from home.",
                "Traceroute stops at the edge of the {region} network.",
                "We already checked our firewall rules.",
            ],
            prios="mhu",
        ),
        T(
            subjects=[
                "CSV export is broken",
                "Export from {product} produces empty files",
                "Exported CSV has wrong column order",
            ],
            facts=[
                "Exporting data from {product} creates a file with only the header row.",
                "The export worked last week with the same filters.",
                "Dates in the export are shifted by one day.",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "Sync job stuck at {pct} percent",
                "{product} sync never finishes",
                "File sync hangs on large folders",
            ],
            facts=[
                "The sync job for {product} stops at {pct} percent every time.",
                "Restarting the client did not change anything.",
                "The log only says that the job is still waiting.",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "How do I rotate API keys for {product}?",
                "API key rotation best practice",
                "Question about API key expiry",
            ],
            facts=[
                "We want to rotate our {product} API keys every {n} days.",
                "Can an old key stay valid for a short time after the new one is created?",
                "Is there an endpoint to automate this?",
            ],
            prios="lm",
        ),
        T(
            subjects=[
                "Mobile app crashes on startup",
                "{product} app closes on {mobile}",
                "App crash after the latest update",
            ],
            facts=[
                "The {product} app on {mobile} closes immediately after opening.",
                "Reinstalling the app did not help.",
                "It started after the update on {date}.",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "Backup job failed last night",
                "Nightly backup to {region} failed",
                "Scheduled snapshot reported as failed",
            ],
            facts=[
                "The nightly backup of our main database failed with {error}.",
                "The previous {n} backups completed normally.",
                "Disk space on the source server looks fine.",
            ],
            prios="mhu",
        ),
        T(
            subjects=[
                "Question about rate limits on the {product} API",
                "What are the API limits on the {plan} plan?",
                "Rate limit headers missing",
            ],
            facts=[
                "We plan to send about {n}000 requests per hour to the {product} API.",
                "Which limits apply to the {plan} plan?",
                "Is it possible to raise the limit temporarily?",
            ],
            prios="lm",
        ),
        T(
            subjects=[
                "Deployment to {region} keeps failing",
                "Deploys stuck in pending state",
                "Build pipeline fails at the upload step",
            ],
            facts=[
                "Every deployment to {region} fails at the upload step with {error}.",
                "Deployments to other regions still work.",
                "We retried {m} times since {time}.",
            ],
            prios="mhu",
        ),
    ],
    "account": [
        T(
            subjects=["Password reset email not arriving", "Cannot reset my password", "Reset link does not work"],
            facts=[
                "The password reset email never arrives, not even in the spam folder.",
                "The reset link says it has expired right after I open it.",
                "I tried {m} times since {time}.",
            ],
            prios="mhu",
        ),
        T(
            subjects=[
                "Add a new admin to our workspace",
                "Give admin rights to a colleague",
                "How do I make someone an admin?",
            ],
            facts=[
                "A colleague from the IT department needs admin rights in our {plan} workspace.",
                "The option to change roles is greyed out for me.",
                "Our current admin is on leave until {date}.",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "Locked out after too many login attempts",
                "Account locked after failed logins",
                "Login disabled for my user",
            ],
            facts=[
                "My account was locked after I mistyped the password a few times.",
                "The unlock email has not arrived after {n} minutes.",
                "I use the {product} web app in {browser}.",
            ],
            prios="mhu",
        ),
        T(
            subjects=[
                "Merge two workspaces into one",
                "Combine our {plan} workspaces",
                "Move users between workspaces",
            ],
            facts=[
                "We have two workspaces after a merger and want to combine them.",
                "About {n} users need to move to the main workspace.",
                "Can files and permissions be kept during the move?",
            ],
            prios="lm",
        ),
        T(
            subjects=[
                "Remove a former employee from our workspace",
                "Deactivate a user who left the company",
                "Offboarding a user from {product}",
            ],
            facts=[
                "An employee left on {date} and still appears as an active user.",
                "I do not see an option to deactivate the user in settings.",
                "Their files should be transferred to their manager.",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "Change the company name on our account",
                "Update our organisation name",
                "Our company was renamed",
            ],
            facts=[
                "Our company changed its legal name on {date}.",
                "The old name still shows on the login page and in the workspace header.",
                "Is the workspace URL updated automatically?",
            ],
            prios="lm",
        ),
        T(
            subjects=[
                "Invitation link expired for new team member",
                "Invite emails not received",
                "New users cannot accept invitations",
            ],
            facts=[
                "New team members say the invitation link has expired before they open it.",
                "We sent {n} invitations on {date} and none of them worked.",
                "Resending the invite gives the same result.",
            ],
            prios="mhu",
        ),
        T(
            subjects=[
                "SSO login loops back to the sign-in page",
                "Single sign-on redirect loop",
                "Login with SSO stopped working",
            ],
            facts=[
                "After signing in with our identity provider we land on the sign-in page again.",
                "Password login still works for accounts that have one.",
                "We did not change the SSO configuration.",
            ],
            prios="mhu",
        ),
        T(
            subjects=["How do I delete my account?", "Close our {plan} account", "Request to delete a user profile"],
            facts=[
                "We no longer use {product} and want to close the account.",
                "Please confirm that all data is removed after deletion.",
                "Is an export of our data possible before that?",
            ],
            prios="lm",
        ),
        T(
            subjects=[
                "Two-factor codes not accepted",
                "Lost my phone with the authenticator app",
                "2FA code always invalid",
            ],
            facts=[
                "The six-digit code from my authenticator app is rejected every time.",
                "The time on my phone is set automatically.",
                "I still have my backup codes somewhere.",
            ],
            prios="mh",
        ),
        T(
            subjects=[
                "Change the login email of my account",
                "Update my email address",
                "Move accounts to a new email domain",
            ],
            facts=[
                "Our company moved to a new email domain on {date}.",
                "I want to keep my history and settings with the new address.",
                "About {n} users need the same change.",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "Transfer workspace ownership to a colleague",
                "Change the account owner",
                "New owner for our {plan} subscription",
            ],
            facts=[
                "The current owner is leaving the company on {date}.",
                "Ownership should move to the head of IT.",
                "Billing contacts should stay the same.",
            ],
            prios="lmh",
        ),
    ],
    "shipping": [
        T(
            subjects=["Order {order} has not arrived", "Late delivery for order {order}", "Where is my order {order}?"],
            facts=[
                "Our order {order} for {qty} {item} was due on {date} but has not arrived.",
                "The tracking page has not changed for {m} days.",
                "We paid for {carrier} express delivery.",
            ],
            prios="lmhu",
        ),
        T(
            subjects=[
                "Tracking number {tracking} shows no updates",
                "No tracking information for {order}",
                "{carrier} tracking stuck for order {order}",
            ],
            facts=[
                "Tracking number {tracking} has shown label created since {date}.",
                "{carrier} says they never received the package.",
                "The order was placed on {date2}.",
            ],
            prios="lmh",
        ),
        T(
            subjects=["Received damaged {item}", "{item_cap} arrived broken", "Damaged box in order {order}"],
            facts=[
                "The {item} in order {order} arrived with cracked cases.",
                "The outer box was crushed on one side.",
                "We kept the packaging and took photos.",
            ],
            prios="mhu",
        ),
        T(
            subjects=[
                "Wrong item in order {order}",
                "We received the wrong product",
                "Order {order} contains the wrong model",
            ],
            facts=[
                "We ordered {item} but received {item2} instead.",
                "The packing slip matches our order, only the box content is wrong.",
                "How do we send the wrong item back?",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "Change delivery address for order {order}",
                "Update the shipping address",
                "Ship order {order} to our new office",
            ],
            facts=[
                "We moved offices and order {order} should go to the new address.",
                "The order has not shipped yet according to the status page.",
                "The new address is already saved in our billing profile.",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "Missing items from order {order}",
                "Only part of order {order} delivered",
                "Incomplete delivery of {item}",
            ],
            facts=[
                "We ordered {qty} {item} but only {qty2} arrived.",
                "There was only one box although the confirmation mentioned two.",
                "Is the rest shipped separately?",
            ],
            prios="lmhu",
        ),
        T(
            subjects=["Return request for order {order}", "How do I return {item}?", "Return label for order {order}"],
            facts=[
                "We want to return the {item} from order {order} because we no longer need them.",
                "The items are unused and in the original packaging.",
                "Please send a prepaid return label.",
            ],
            prios="lm",
        ),
        T(
            subjects=["Do you ship to {country}?", "Shipping options for {country}", "Delivery times to {country}"],
            facts=[
                "We are opening an office in {country} and need {qty} {item} there.",
                "How long does delivery usually take?",
                "Are import fees included in the price?",
            ],
            prios="lm",
        ),
        T(
            subjects=[
                "Package stuck in customs in {country}",
                "Customs hold for order {order}",
                "Shipment held at the border",
            ],
            facts=[
                "Order {order} has been held by customs in {country} since {date}.",
                "{carrier} asks for a commercial invoice that we do not have.",
                "Can you send the export documents?",
            ],
            prios="mhu",
        ),
        T(
            subjects=[
                "Delivery scheduled for the wrong date",
                "Reschedule delivery of order {order}",
                "Delivery window does not work for us",
            ],
            facts=[
                "{carrier} scheduled the delivery of order {order} for {date}, when our office is closed.",
                "Can the delivery be moved to the following week?",
                "Nobody will be at the reception that day.",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "Expedite shipping for order {order}",
                "Faster delivery for {item}",
                "Upgrade order {order} to express",
            ],
            facts=[
                "We need the {item} from order {order} sooner than planned.",
                "We are happy to pay for express shipping.",
                "Please confirm the new delivery date.",
            ],
            prios="mhu",
        ),
        T(
            subjects=[
                "Order {order} marked delivered but not received",
                "Package shows delivered but nothing arrived",
                "Delivery confirmation for {tracking} is wrong",
            ],
            facts=[
                "Tracking says order {order} was delivered on {date} but nobody received it.",
                "Our reception and mail room have no record of the package.",
                "The signature on the proof of delivery is not from our staff.",
            ],
            prios="mhu",
        ),
    ],
    "security": [
        T(
            subjects=[
                "Suspicious login from unknown location",
                "Unrecognised sign-in to our admin account",
                "Login alert from {country}",
            ],
            facts=[
                "We see a login to our admin account from {country} that nobody on our team made.",
                "The sign-in happened on {date} at {clock}.",
                "We already changed the password.",
            ],
            prios="mhu",
        ),
        T(
            subjects=[
                "Possible data breach in {product}",
                "Customer data found online",
                "Leaked export from our workspace",
            ],
            facts=[
                "Customer records from our {product} workspace appeared on a public forum.",
                "The file matches an export created on {date}.",
                "We have not shared this file with anyone outside the company.",
            ],
            prios="u",
        ),
        T(
            subjects=[
                "Phishing email pretending to be Acme Cloud",
                "Fake invoice email using your logo",
                "Report a phishing site",
            ],
            facts=[
                "Several employees received an email asking them to log in on a fake Acme Cloud page.",
                "The link points to a domain that looks like yours but is not.",
                "Nobody entered a password as far as we know.",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "API key exposed in public repository",
                "Leaked {product} API key",
                "Secret key committed to GitHub",
            ],
            facts=[
                "A developer pushed a {product} API key to a public repository on {date}.",
                "We removed the commit but the key may have been copied.",
                "Please help us revoke it and check the access log.",
            ],
            prios="hu",
        ),
        T(
            subjects=[
                "Request for penetration test report",
                "Latest pentest summary for {product}",
                "Security assessment documents",
            ],
            facts=[
                "Our auditors ask for the latest penetration test summary of {product}.",
                "A short letter of attestation would also be enough.",
                "Our review is planned for {month}.",
            ],
            prios="lm",
        ),
        T(
            subjects=[
                "Vulnerability report for the {product} login page",
                "Possible XSS in {product}",
                "Security issue found in file sharing",
            ],
            facts=[
                "Our security team found that the {product} login page reflects input without escaping.",
                "We can share the proof of concept privately.",
                "We have not seen it exploited.",
            ],
            prios="mhu",
        ),
        T(
            subjects=[
                "Unknown admin user created in our workspace",
                "New admin account we did not create",
                "Unexpected role change in audit log",
            ],
            facts=[
                "The audit log shows a new admin user created on {date} by an account we do not recognise.",
                "We suspended the user but want to know how it was created.",
                "Nobody in IT approved the change.",
            ],
            prios="hu",
        ),
        T(
            subjects=[
                "Question about encryption at rest",
                "Which cipher does {product} use?",
                "Encryption details for our compliance review",
            ],
            facts=[
                "Our compliance team wants to know how data in {product} is encrypted at rest.",
                "Do you support customer-managed keys on the {plan} plan?",
                "Where are the keys stored?",
            ],
            prios="lm",
        ),
        T(
            subjects=["Enable audit log export", "Audit log missing entries", "Audit log retention on the {plan} plan"],
            facts=[
                "We need to export the audit log of our workspace for a review in {month}.",
                "Entries older than {n} days seem to be missing.",
                "Can the log be streamed to our SIEM?",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "Malware detected in synced files",
                "Encrypted files appearing in {product}",
                "Ransomware note found in shared folder",
            ],
            facts=[
                "Our antivirus flagged files that were synced through {product} on {date}.",
                "Many files in the shared folder now have a strange extension.",
                "We disconnected the infected laptop.",
            ],
            prios="hu",
        ),
        T(
            subjects=[
                "Sessions not expiring after logout",
                "Session timeout setting ignored",
                "Old sessions still active",
            ],
            facts=[
                "After logging out, the old session token still works in the API.",
                "We set the session timeout to {n} minutes but users stay logged in for days.",
                "This was found during our internal review.",
            ],
            prios="lmh",
        ),
        T(
            subjects=[
                "Request for SOC 2 report",
                "Compliance documents for {product}",
                "Need your ISO 27001 certificate",
            ],
            facts=[
                "Our procurement team needs your latest SOC 2 report before we renew.",
                "Please also send the data processing agreement.",
                "Our vendor review takes place in {month}.",
            ],
            prios="lm",
        ),
    ],
}

# Priority cue sentences: the only place where priority is signalled (plus an occasional "URGENT:" subject).
CUES = {
    "urgent": [
        "Production is down and all users are affected.",
        "This is a full outage for all of our users.",
        "Our production environment is down right now.",
        "All {n} users in our company are affected.",
        "It is an outage for our whole company and our customers.",
    ],
    "high": [
        "I cannot work until this is fixed.",
        "My team is blocked and our deadline is today.",
        "We are blocked and need a fix today.",
        "I can't do my work until this is resolved.",
        "The deadline for this is today and we are blocked.",
    ],
    "medium": [
        "It is a minor inconvenience and we have a workaround.",
        "We can work around it for now, but please fix it this week.",
        "Not blocking, but it is annoying for the team.",
        "There is a workaround, so it can wait a few days.",
        "We would like an answer this week, but it is not blocking.",
    ],
    "low": [
        "Just a question, no rush.",
        "No urgency, reply whenever you have time.",
        "Nothing is broken, this is just a question.",
        "Low priority, any time next week is fine.",
        "Only a general question, no rush at all.",
    ],
}
CATEGORY_CUES = {
    ("security", "urgent"): ["This looks like a data breach.", "We treat this as a data breach affecting all users."],
    ("shipping", "urgent"): ["Production is down at our data centre until this arrives."],
    ("billing", "urgent"): ["All users lost access and production is down."],
    ("account", "urgent"): ["All users are locked out and production is down."],
    ("billing", "high"): ["This is blocking our month-end close, which is due today."],
    ("shipping", "high"): ["We are blocked on an installation with a deadline today."],
}

GREETINGS = ["", "", "", "Hi,", "Hello,", "Hi team,", "Hello support,", "Good morning,", "Dear Acme team,"]
CLOSINGS = [
    "",
    "",
    "",
    "Thanks.",
    "Thank you.",
    "Thanks in advance.",
    "Best regards,\nIT team",
    "Kind regards,\nFinance department",
    "Cheers,\nOps team",
    "Regards,\nOffice management",
]
DETAILS = [
    "Our account ID is {account_id}.",
    "We are on the {plan} plan.",
    "Our workspace has {n} users.",
    "Customer number {account_id}.",
]


def _fill_values(rng: random.Random) -> dict[str, str]:
    plan, plan2 = rng.sample(PLANS, 2)
    item, item2 = rng.sample(ITEMS, 2)
    error = rng.choice(ERRORS)
    qty = rng.randint(3, 40)

    def date() -> str:
        return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"

    return {
        "product": rng.choice(PRODUCTS),
        "plan": plan,
        "plan2": plan2,
        "region": rng.choice(REGIONS),
        "error": error,
        "error_cap": error[0].upper() + error[1:],
        "browser": rng.choice(BROWSERS),
        "mobile": rng.choice(MOBILE),
        "invoice": f"INV-{rng.randint(10000, 99999)}",
        "order": f"ORD-{rng.randint(100000, 999999)}",
        "tracking": f"TRK{rng.randint(100000000, 999999999)}",
        "account_id": f"AC-{rng.randint(1000, 99999)}",
        "amount": f"${rng.randint(19, 2400)}.{rng.choice(['00', '50', '99', '20', '45'])}",
        "amount2": f"${rng.randint(19, 900)}.00",
        "date": date(),
        "date2": date(),
        "month": rng.choice(MONTHS),
        "time": rng.choice(TIMES),
        "clock": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} UTC",
        "n": str(rng.randint(5, 250)),
        "m": str(rng.randint(2, 9)),
        "pct": str(rng.choice(range(5, 100, 5))),
        "item": item,
        "item2": item2,
        "item_cap": item[0].upper() + item[1:],
        "qty": str(qty),
        "qty2": str(rng.randint(1, qty - 1)),
        "carrier": rng.choice(CARRIERS),
        "country": rng.choice(COUNTRIES),
    }


def summary_of(subject: str) -> str:
    """The summary rule: subject verbatim, lower-cased, trailing punctuation (and whitespace) removed."""
    return subject.strip().lower().rstrip(TRAILING_PUNCT)


def answer_json(category: str, priority: str, subject: str) -> str:
    obj = {"category": category, "priority": priority, "team": TEAMS[category], "summary": summary_of(subject)}
    return json.dumps(obj)


def _pii_parts(rng: random.Random, category: str) -> tuple[list[str], str]:
    """(sentences to add to the body, signature block). Always at least one PII item."""
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    name = f"{first} {last}"
    email = f"{first}.{last}@{rng.choice(EMAIL_DOMAINS)}".lower()
    phone = rng.choice(
        [
            f"+1 415 555 {rng.randint(100, 199):04d}",
            f"+44 20 7946 {rng.randint(0, 999):04d}",
            f"+1 212 555 {rng.randint(100, 199):04d}",
        ]
    )
    ip = rng.choice(
        [f"203.0.113.{rng.randint(2, 254)}", f"198.51.100.{rng.randint(2, 254)}", f"192.0.2.{rng.randint(2, 254)}"]
    )
    options = [
        ([f"My name is {name} and I manage our account."], ""),
        ([f"You can reach me at {email}."], ""),
        ([f"Please call me at {phone}."], ""),
        ([], f"Best regards,\n{name}\n{email}"),
        ([], f"Thanks,\n{name}, {phone}"),
        ([f"My name is {name}, call me at {phone} if needed."], ""),
    ]
    if category == "billing":
        options += [([f"The card we used is {rng.choice(TEST_CARDS)}."], f"Thanks,\n{name}")] * 3
    if category in ("security", "technical"):
        options += [([f"The requests came from IP {ip}."], f"Regards,\n{name}")] * 3
    return rng.choice(options)


def make_ticket(rng: random.Random, category: str, priority: str, pii: bool = False) -> tuple[str, str]:
    """Return (ticket text, subject)."""
    letter = priority[0]
    template = rng.choice([t for t in TEMPLATES[category] if letter in t["prios"]])
    values = _fill_values(rng)
    subject = rng.choice(template["subjects"]).format_map(values)
    if priority == "urgent" and rng.random() < 0.2:
        subject = "URGENT: " + subject
    if not subject.endswith("?"):
        r = rng.random()
        if r < 0.08:
            subject += "."
        elif r < 0.16 and priority in ("high", "urgent"):
            subject += "!"

    facts = template["facts"]
    k = rng.choice([1, 2, 2])
    idx = sorted(rng.sample(range(len(facts)), k))
    if 0 not in idx and rng.random() < 0.5:
        idx = [0] + idx[:1]
    sentences = [facts[i].format_map(values) for i in idx]

    cue = rng.choice(CUES[priority] + CATEGORY_CUES.get((category, priority), [])).format_map(values)
    pos = rng.random()
    if pos < 0.65:
        sentences.append(cue)
    elif pos < 0.85 or len(sentences) == 1:
        sentences.insert(0, cue)
    else:
        sentences.insert(1, cue)

    signature = ""
    if pii:
        extra, signature = _pii_parts(rng, category)
        sentences += extra
    elif len(sentences) < 4 and rng.random() < 0.3:
        sentences.append(rng.choice(DETAILS).format_map(values))

    greeting = rng.choice(GREETINGS)
    closing = signature or rng.choice(CLOSINGS)
    body = " ".join(sentences[:4] if not pii else sentences)
    parts = [f"Subject: {subject}", ""]
    parts += [greeting, body] if greeting else [body]
    if closing:
        if "\n" in closing:
            parts += ["", closing]
        else:
            parts[-1] += " " + closing
    return "\n".join(parts), subject


WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> frozenset[str]:
    return frozenset(WORD.findall(text.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / max(1, len(a | b))


class Pool:
    """Keeps generated tickets unique and pairwise dissimilar (word-set Jaccard below MAX_JACCARD)."""

    def __init__(self) -> None:
        self.texts: set[str] = set()
        self.word_sets: list[frozenset[str]] = []

    def add(self, text: str) -> bool:
        if text in self.texts:
            return False
        ws = words(text)
        if any(jaccard(ws, other) >= MAX_JACCARD for other in self.word_sets):
            return False
        self.texts.add(text)
        self.word_sets.append(ws)
        return True


def unique_ticket(rng: random.Random, pool: Pool, category: str, priority: str, pii: bool = False):
    for _ in range(2000):
        text, subject = make_ticket(rng, category, priority, pii)
        if pool.add(text):
            return text, subject
    raise RuntimeError(f"could not generate a unique {category}/{priority} ticket")


def chat_row(row_id: str, ticket: str, answer: str) -> dict:
    return {
        "id": row_id,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": ticket},
            {"role": "assistant", "content": answer},
        ],
    }


def near_duplicate(rng: random.Random, text: str) -> str:
    """Same ticket with one word changed or whitespace/punctuation noise; the subject line is untouched."""
    head, sep, body = text.partition("\n\n")
    swaps = [
        ("Thanks.", "Thank you."),
        ("Thank you.", "Thanks!"),
        ("Hi,", "Hello,"),
        ("Hello,", "Hi,"),
        (" our ", " the "),
        (" the ", " our "),
        (" we ", " We  "),
        ("Please ", "Kindly "),
        (" is ", " seems "),
    ]
    ops = ["swap", "space", "punct", "trail"]
    rng.shuffle(ops)
    for op in ops:
        new = body
        if op == "swap":
            for a, b in rng.sample(swaps, len(swaps)):
                if a in body:
                    new = body.replace(a, b, 1)
                    break
        elif op == "space":
            positions = [i for i, c in enumerate(body) if c == " "]
            if positions:
                i = rng.choice(positions)
                new = body[:i] + "   " + body[i + 1 :]
        elif op == "punct":
            i = body.find(". ")
            if i > 0:
                new = body[:i] + "!! " + body[i + 2 :]
        elif op == "trail":
            new = body + rng.choice(["  ", " \n", "..", " !"])
        if new != body:
            return head + sep + new
    return head + sep + body + " "


LOG_LINES = [
    "{ts} ERROR importer.worker[{pid}]: batch {b} failed: connection reset by peer (retry {r}/5)",
    "{ts} WARN  importer.queue: backlog is {q} jobs, oldest job waiting {w}s",
    "{ts} ERROR importer.db: deadlock detected while writing table customer_events, rolling back batch {b}",
    "{ts} INFO  importer.worker[{pid}]: reconnecting to storage endpoint eu-west-1 (attempt {r})",
]


def long_ticket(rng: random.Random) -> tuple[str, str]:
    subject = "Nightly import job fails with a long error log"
    lines = []
    for i in range(22):
        sec = i * 47 + rng.randint(0, 40)
        ts = f"2024-03-05 02:{sec // 60:02d}:{sec % 60:02d}"
        lines.append(
            rng.choice(LOG_LINES).format(
                ts=ts,
                pid=rng.randint(3000, 3999),
                b=rng.randint(1, 400),
                r=rng.randint(1, 5),
                q=rng.randint(10, 900),
                w=rng.randint(5, 600),
            )
        )
    body = (
        "Hi,\nthe nightly import job into Acme Analytics fails every night since the update. "
        "I cannot work until this is fixed. Here is the full log of last night:\n\n" + "\n".join(lines) + "\n\nThanks."
    )
    return f"Subject: {subject}\n\n{body}", subject


def build_rows() -> list[str]:
    rng = random.Random(SEED)
    pool = Pool()

    slots = [(c, p) for c in CATEGORIES for p, n in zip(PRIORITIES, PLAN[c], strict=True) for _ in range(n)]
    rng.shuffle(slots)
    # Alpaca rows: the first two slots of each category; PII rows: N_PII of the remaining chat slots.
    alpaca, seen = set(), dict.fromkeys(CATEGORIES, 0)
    for i, (c, _) in enumerate(slots):
        if seen[c] < N_ALPACA // len(CATEGORIES):
            alpaca.add(i)
            seen[c] += 1
    pii = set(rng.sample([i for i in range(len(slots)) if i not in alpaca], N_PII))

    rows: list[dict] = []
    for i, (category, priority) in enumerate(slots):
        ticket, subject = unique_ticket(rng, pool, category, priority, pii=i in pii)
        row_id = f"t{i + 1:04d}"
        answer = answer_json(category, priority, subject)
        if i in alpaca:
            rows.append({"id": row_id, "instruction": SYSTEM, "input": ticket, "output": answer})
        else:
            rows.append(chat_row(row_id, ticket, answer))
    lines = [json.dumps(r) for r in rows]
    chat_rows = [r for r in rows if "messages" in r]
    next_id = len(rows) + 1

    # Exact duplicates: byte-identical copies of existing chat rows (same id).
    lines += [json.dumps(r) for r in rng.sample(chat_rows, N_EXACT_DUP)]

    # Near duplicates: same ticket with one word changed or whitespace/punctuation noise; same answer, new id.
    for r in rng.sample(chat_rows, N_NEAR_DUP):
        msgs = r["messages"]
        lines.append(
            json.dumps(chat_row(f"t{next_id:04d}", near_duplicate(rng, msgs[1]["content"]), msgs[2]["content"]))
        )
        next_id += 1

    # Bad rows, one of each kind.
    def fresh():
        nonlocal next_id
        category, priority = rng.choice(CATEGORIES), rng.choice(PRIORITIES)
        ticket, subject = unique_ticket(rng, pool, category, priority)
        row_id = f"t{next_id:04d}"
        next_id += 1
        return row_id, ticket, category, priority, subject

    rid, ticket, c, p, s = fresh()  # 1. malformed JSON (truncated line)
    full = json.dumps(chat_row(rid, ticket, answer_json(c, p, s)))
    lines.append(full[: int(len(full) * 0.6)])
    rid, ticket, c, p, s = fresh()  # 2. missing "messages" (typo key)
    lines.append(json.dumps({"id": rid, "message": chat_row(rid, ticket, answer_json(c, p, s))["messages"]}))
    rid, ticket, c, p, s = fresh()  # 3. unknown role
    row = chat_row(rid, ticket, answer_json(c, p, s))
    row["messages"][2]["role"] = "bot"
    lines.append(json.dumps(row))
    rid, ticket, c, p, s = fresh()  # 4. empty user content
    row = chat_row(rid, ticket, answer_json(c, p, s))
    row["messages"][1]["content"] = ""
    lines.append(json.dumps(row))
    rid, ticket, c, p, s = fresh()  # 5. conversation ends with the user
    row = chat_row(rid, ticket, answer_json(c, p, s))
    row["messages"] = row["messages"][:2]
    lines.append(json.dumps(row))
    rid, ticket, c, p, s = fresh()  # 6. system turn not first
    row = chat_row(rid, ticket, answer_json(c, p, s))
    row["messages"][0], row["messages"][1] = row["messages"][1], row["messages"][0]
    lines.append(json.dumps(row))
    rid, ticket, c, p, s = fresh()  # 7. answer violates the schema (priority outside the enum)
    bad = json.loads(answer_json(c, p, s))
    bad["priority"] = "critical"
    lines.append(json.dumps(chat_row(rid, ticket, json.dumps(bad))))
    ticket, subject = long_ticket(rng)  # 8. far too long for max_seq_len 512 (otherwise valid)
    lines.append(json.dumps(chat_row(f"t{next_id:04d}", ticket, answer_json("technical", "high", subject))))

    random.Random(SHUFFLE_SEED).shuffle(lines)
    return lines


def schema() -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Acme Cloud ticket triage answer",
        "description": (
            "Triage of one Acme Cloud support ticket, answered as one compact JSON object with keys in the order "
            "category, priority, team, summary. category: billing, technical, account, shipping or security. "
            "priority from cues in the ticket: urgent = production down, outage, all users affected or a data "
            "breach; high = the writer cannot work, is blocked or has a deadline today; medium = a minor "
            "inconvenience with a workaround, not blocking; low = just a question, no rush. team follows from "
            "category: billing->finance, technical->engineering, account->customer-success, shipping->logistics, "
            "security->trust-and-safety. summary: the ticket's subject line (the text after 'Subject: ' on the "
            "first line) copied verbatim, lower-cased, with trailing punctuation removed."
        ),
        "type": "object",
        "properties": {
            "category": {"type": "string", "enum": CATEGORIES, "description": "What the ticket is about."},
            "priority": {"type": "string", "enum": PRIORITIES, "description": "How fast it must be handled."},
            "team": {"type": "string", "enum": list(TEAMS.values()), "description": "Team that owns the category."},
            "summary": {
                "type": "string",
                "minLength": 3,
                "maxLength": 120,
                "description": "Subject line, lower-cased, without trailing punctuation.",
            },
        },
        "required": ["category", "priority", "team", "summary"],
        "additionalProperties": False,
        "allOf": [
            {
                "if": {"properties": {"category": {"const": c}}, "required": ["category"]},
                "then": {"properties": {"team": {"const": t}}},
            }
            for c, t in TEAMS.items()
        ],
    }


def main(argv: list[str] | None = None) -> None:
    default_out = Path(__file__).resolve().parent.parent / "llmtailor" / "assets" / "demo"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_out, help=f"output folder (default: {default_out})")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = build_rows()
    (args.out / "tickets.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    (args.out / "ticket.schema.json").write_text(json.dumps(schema(), indent=2) + "\n", encoding="utf-8", newline="\n")
    print(f"wrote {len(lines)} rows to {args.out / 'tickets.jsonl'} and {args.out / 'ticket.schema.json'}")


if __name__ == "__main__":
    main()
