#!/usr/bin/env python3
"""Builds datasets/istanbul.json, the Istanbul-talks demo dataset (claims-ledger/dataset/v1).

The dataset is a list of write commands (register parties, register the Al Jazeera source, record
every statement in the article with its evidence spans, assert the claims those statements make),
applied in order by `claims-ledger serve --demo` and `claims-ledger load`. The JSON is generated:
edit this script, never the JSON, and re-run it after every edit:

    python3 datasets/build_istanbul.py            # from the repository root

Standard library only (Python 3.11). The source text is read byte for byte from
../shared/corpus/istanbul-talks-aljazeera.txt (override with --corpus). Every span is located with
str.index on that text (Python str offsets are Unicode code points, as the server expects) and must
occur exactly once. Before writing, the script checks the rules the server enforces (slugs, lengths,
references to earlier commands, span text, stated times truncated and not after publication).

Ids are fixed UUIDs written out below, so reloading the dataset is idempotent. New ones were minted
with uuid.uuid5(NAMESPACE, "<kind>/<readable name>"), e.g.
    python3 -c 'import uuid; print(uuid.uuid5(uuid.UUID("fba0d18e-9ee1-5380-9500-d05787208aee"),
                "statement/my-new-statement"))'
Never change an id that has been published: it would become a different entity.
"""
from __future__ import annotations

import argparse
import json
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "istanbul-talks-aljazeera.txt"
DEFAULT_OUTPUT = REPO / "datasets" / "istanbul.json"

FORMAT = "claims-ledger/dataset/v1"
NAME = "istanbul-talks"
# uuid.uuid5(uuid.NAMESPACE_URL, "urn:claims-ledger:dataset:istanbul-talks"); used only to mint ids.
NAMESPACE = uuid.UUID("fba0d18e-9ee1-5380-9500-d05787208aee")

SOURCE_ID = "fba36563-1a32-5e93-a3e1-be02c163d87c"
PUBLISHED_AT = "2024-06-06T00:00:00Z"  # assumed: the corpus copy has no dateline
RETRIEVED_AT = "2026-11-01T00:00:00Z"
WEDNESDAY = "2024-06-05T00:00:00Z"  # "said on Wednesday": the Wednesday before the assumed publication
JUNE_2024 = "2024-06-01T00:00:00Z"  # month precision: said around publication, day unknown
YEAR_2024 = "2024-01-01T00:00:00Z"  # year precision: said or held at an unknown earlier time
YEAR_2022 = "2022-01-01T00:00:00Z"

DESCRIPTION = (
    "Who said what about Russia's proposal of renewed peace talks with Ukraine in Istanbul, as reported "
    "by Al Jazeera (copy in shared/corpus/istanbul-talks-aljazeera.txt): Sergey Lavrov's proposal, his "
    "quotes and paraphrased remarks, Ukraine's and Turkey's non-responses, Kyiv's preconditions, Turkey's "
    "earlier offer to mediate, the accusations of bad faith after the 2022 talks, analysts' and Ukrainian "
    "officials' readings of Moscow's motives, and the positions of Western leaders and Antony Blinken. "
    "DATES ARE AN ASSUMPTION: the corpus copy has no dateline, so the source's published_at is taken to "
    "be 2024-06-06 and \"Wednesday\" to be 2024-06-05 (day precision). Statements made at an unknown "
    "earlier time (\"has maintained\", \"has previously expressed\", \"recently emphasized\", \"have "
    "consistently reiterated\") carry year precision (2024); present-tense readings (\"analysts suggest\", "
    "\"officials say\") carry month precision (June 2024); the 2022 accusations carry year precision "
    "(2022). The source URL and title are likewise reconstructed: the corpus copy has neither."
)

SOURCE = {
    "source_id": SOURCE_ID,
    "publisher": "Al Jazeera",
    "url": "https://www.aljazeera.com/news/russia-proposes-renewed-peace-talks-with-ukraine-in-istanbul",
    "title": "Russia proposes renewed peace talks with Ukraine in Istanbul",
    "published_at": PUBLISHED_AT,
    "retrieved_at": RETRIEVED_AT,
    "language": "en",
}


def affiliation(organisation_id: str, role: str, since: str | None = None, until: str | None = None) -> dict:
    a = {"organisation_id": organisation_id, "role": role}
    if since is not None:
        a["since"] = since
    if until is not None:
        a["until"] = until
    return a


# Organisations before the parties that reference them.
PARTIES = [
    {"party_id": "russia", "kind": "state", "name": "Russia",
     "aliases": ["Russian Federation", "Moscow", "the Kremlin"], "affiliations": [],
     "description": "The Russian Federation."},
    {"party_id": "ukraine", "kind": "state", "name": "Ukraine", "aliases": ["Kyiv"], "affiliations": [],
     "description": "Ukraine."},
    {"party_id": "turkey", "kind": "state", "name": "Turkey", "aliases": ["Türkiye", "Ankara"],
     "affiliations": [],
     "description": "The Republic of Türkiye; host and mediator of the early-2022 Russia-Ukraine talks in Istanbul."},
    {"party_id": "united-states", "kind": "state", "name": "United States",
     "aliases": ["United States of America", "US", "U.S.", "Washington"], "affiliations": [],
     "description": "The United States of America."},
    {"party_id": "germany", "kind": "state", "name": "Germany",
     "aliases": ["Federal Republic of Germany", "Berlin"], "affiliations": [],
     "description": "The Federal Republic of Germany."},
    {"party_id": "united-kingdom", "kind": "state", "name": "United Kingdom",
     "aliases": ["UK", "Britain", "London"], "affiliations": [],
     "description": "The United Kingdom of Great Britain and Northern Ireland."},
    {"party_id": "zelenskyy-administration", "kind": "government", "name": "Zelenskyy administration",
     "aliases": ["President Volodymyr Zelenskyy’s administration"],
     "affiliations": [affiliation("ukraine", "Presidential administration")],
     "description": "The administration of Ukraine's President Volodymyr Zelenskyy."},
    {"party_id": "ukrainian-government", "kind": "government", "name": "Government of Ukraine",
     "aliases": ["Ukraine’s government", "Ukrainian government"],
     "affiliations": [affiliation("ukraine", "Government")],
     "description": "The government of Ukraine."},
    {"party_id": "turkish-government", "kind": "government", "name": "Government of Turkey",
     "aliases": ["The Turkish government"], "affiliations": [affiliation("turkey", "Government")],
     "description": "The government of Türkiye."},
    {"party_id": "western-leaders", "kind": "group", "name": "Western leaders", "aliases": [],
     "affiliations": [],
     "description": "Western leaders, including those from the United States, Germany and the United "
                    "Kingdom, as a group the article does not name individually."},
    {"party_id": "analysts", "kind": "group", "name": "Analysts", "aliases": [], "affiliations": [],
     "description": "Unnamed analysts cited by the article."},
    {"party_id": "ukrainian-officials", "kind": "group", "name": "Ukrainian officials", "aliases": [],
     "affiliations": [affiliation("ukraine", "Officials")],
     "description": "Unnamed Ukrainian officials cited by the article."},
    {"party_id": "sergey-lavrov", "kind": "person", "name": "Sergey Lavrov",
     "aliases": ["Sergei Lavrov", "Сергей Лавров"],
     "affiliations": [affiliation("russia", "Foreign Minister", since="2004-03-09T00:00:00Z")],
     "description": "Foreign Minister of Russia."},
    {"party_id": "volodymyr-zelenskyy", "kind": "person", "name": "Volodymyr Zelenskyy",
     "aliases": ["Volodymyr Zelensky", "Zelenskyy"],
     "affiliations": [affiliation("ukraine", "President", since="2019-05-20T00:00:00Z")],
     "description": "President of Ukraine."},
    {"party_id": "antony-blinken", "kind": "person", "name": "Antony Blinken", "aliases": ["Tony Blinken"],
     "affiliations": [affiliation("united-states", "Secretary of State",
                                  since="2021-01-26T00:00:00Z", until="2025-01-20T00:00:00Z")],
     "description": "U.S. Secretary of State from January 2021 to January 2025."},
]


def claim(claim_id: str, party_id: str, topic: str, stance: str, conditions: tuple[str, ...] = ()) -> dict:
    return {"claim_id": claim_id, "party_id": party_id, "topic": topic, "stance": stance,
            "conditions": list(conditions)}


BRIEFING = "press briefing in Moscow"
KYIV_CONDITION = "if Kyiv is genuinely interested in peace"
RESOLUTION_BY_UKRAINE = ("any resolution must be determined by Ukraine and not imposed through external "
                      "diplomacy")

# In the article's order. "spans" are phrases that must each occur exactly once in the source text;
# "at"/"precision" is the stated time (already truncated to the start of its period).
STATEMENTS = [
    {
        "name": "lavrov-proposes-istanbul-talks",
        "statement_id": "0ab80820-e5f0-5b9e-860f-21491a70ce77",
        "speaker_id": "sergey-lavrov", "on_behalf_of_id": "russia",
        "at": WEDNESDAY, "precision": "day", "venue": BRIEFING,
        "mode": "reported", "attribution_verb": "said",
        "content": "Russia has proposed a renewed round of peace talks with Ukraine in Istanbul, citing the "
                   "Turkish city’s previous role as a host for negotiations between the two sides.",
        "spans": [
            "Russia has proposed a renewed round of peace talks with Ukraine in Istanbul, citing the "
            "Turkish city’s previous role as a host for negotiations between the two sides.",
            "Russian Foreign Minister Sergey Lavrov said on Wednesday",
            "Lavrov announced the offer during a press briefing in Moscow",
        ],
        "claims": [
            claim("6c1dab87-981c-510a-bc13-f138070a1131", "russia", "resumption-of-talks",
                  "proposes a renewed round of peace talks with Ukraine"),
            claim("ae371e04-ded6-5ed2-995c-857c5b3e79c1", "russia", "negotiation-venue", "Istanbul"),
        ],
    },
    {
        "name": "ukraine-yet-to-respond",
        "statement_id": "9606abdf-a243-5294-9c51-1a8396efa0a5",
        "speaker_id": "ukraine", "on_behalf_of_id": None,
        "at": WEDNESDAY, "precision": "day", "venue": None,
        "mode": "reported_no_comment", "attribution_verb": "has yet to respond",
        "content": "Ukraine has yet to respond to Russia’s proposal of renewed peace talks in Istanbul "
                   "(according to Russian Foreign Minister Sergey Lavrov).",
        "spans": [
            "However, Ukraine has yet to respond to the proposal, Russian Foreign Minister Sergey Lavrov "
            "said on Wednesday.",
        ],
        "claims": [
            claim("3c194a36-7f60-55fb-aab1-3bdb57b25bcf", "ukraine", "response-to-istanbul-proposal",
                  "no response yet"),
        ],
    },
    {
        "name": "lavrov-open-to-diplomacy",
        "statement_id": "7fe62173-f2c8-5208-854c-c70f687deaa3",
        "speaker_id": "sergey-lavrov", "on_behalf_of_id": "russia",
        "at": WEDNESDAY, "precision": "day", "venue": BRIEFING,
        "mode": "paraphrase", "attribution_verb": "stated",
        "content": "Russia remains open to diplomatic channels to resolve the ongoing conflict.",
        "spans": [
            "Lavrov announced the offer during a press briefing in Moscow, stating that Russia remains "
            "open to diplomatic channels to resolve the ongoing conflict.",
        ],
        "claims": [
            claim("de658f95-2958-5b48-9ac5-5f8f0d299d30", "russia", "diplomatic-resolution",
                  "open to diplomatic channels to resolve the conflict"),
        ],
    },
    {
        "name": "lavrov-prepared-to-resume-quote",
        "statement_id": "a01fe914-a450-5b1d-a384-c531cf157398",
        "speaker_id": "sergey-lavrov", "on_behalf_of_id": "russia",
        "at": WEDNESDAY, "precision": "day", "venue": BRIEFING,
        "mode": "direct_quote", "attribution_verb": "told reporters",
        "content": "We are prepared to resume negotiations in Istanbul if Kyiv is genuinely interested in peace",
        "spans": [
            "We are prepared to resume negotiations in Istanbul if Kyiv is genuinely interested in peace",
            "Lavrov told reporters",
        ],
        "claims": [
            claim("dc46dea1-3700-5c56-8deb-cc13bfe66c2a", "russia", "negotiation-venue", "Istanbul",
                  (KYIV_CONDITION,)),
            claim("b657913c-e7b8-5e7e-a063-ea93ba933b13", "russia", "resumption-of-talks",
                  "prepared to resume negotiations with Ukraine", (KYIV_CONDITION,)),
        ],
    },
    {
        "name": "lavrov-early-2022-format-acceptable",
        "statement_id": "164acf94-8fc3-5026-8c84-de223b145fce",
        "speaker_id": "sergey-lavrov", "on_behalf_of_id": "russia",
        "at": WEDNESDAY, "precision": "day", "venue": BRIEFING,
        "mode": "paraphrase", "attribution_verb": "emphasized",
        "content": "The format used in the early-2022 talks, which were mediated by Turkey, remains "
                   "acceptable to Moscow.",
        "spans": [
            "He emphasized that the format used in early 2022 talks, which were mediated by Turkey, "
            "remains acceptable to Moscow.",
        ],
        "claims": [
            claim("199d6cae-712b-5e5f-9d7f-a7fc090f2a52", "russia", "negotiation-format",
                  "the early-2022 Turkey-mediated format is acceptable"),
            claim("d6333628-49b5-5fa6-96bc-9a6b57d0b01d", "russia", "mediation",
                  "mediation by Turkey, as in the early-2022 talks, is acceptable"),
        ],
    },
    {
        "name": "turkish-government-no-comment",
        "statement_id": "bcc2a1fd-1a96-537d-a0a4-1f1de8111eb3",
        "speaker_id": "turkish-government", "on_behalf_of_id": "turkey",
        "at": WEDNESDAY, "precision": "day", "venue": None,
        "mode": "reported_no_comment", "attribution_verb": "has not officially commented",
        "content": "The Turkish government has not officially commented on Russia’s renewed suggestion of "
                   "peace talks in Istanbul.",
        "spans": ["The Turkish government has not officially commented on Russia’s renewed suggestion"],
        "claims": [
            claim("725b229b-78fe-5f79-b47a-08a604401c8d", "turkey", "response-to-istanbul-proposal",
                  "no official comment"),
            # Also on "mediation": Turkey's silence on this offer sits next to its earlier offer to mediate.
            claim("4e65216a-791e-5c70-90b8-2665f590fa78", "turkey", "mediation",
                  "no official comment on Russia’s renewed suggestion of talks in Istanbul"),
        ],
    },
    {
        "name": "ankara-willing-to-mediate",
        "statement_id": "b5f6759e-e283-5b1f-beb4-ce5fffaf00fd",
        "speaker_id": "turkey", "on_behalf_of_id": None,
        "at": YEAR_2024, "precision": "year", "venue": None,
        "mode": "reported", "attribution_verb": "has previously expressed",
        "content": "Ankara is willing to mediate between Russia and Ukraine. (Expressed at an unspecified "
                   "earlier time; recorded with year precision.)",
        "spans": ["Ankara has previously expressed its willingness to mediate between the two countries."],
        "claims": [
            claim("71378d65-5e0d-530b-a655-ffbf7b4f0dd3", "turkey", "mediation",
                  "willing to mediate between Russia and Ukraine"),
        ],
    },
    {
        "name": "lavrov-west-discourages-ukraine",
        "statement_id": "2ac8b764-488c-5157-8b7d-42a873b1017d",
        "speaker_id": "sergey-lavrov", "on_behalf_of_id": "russia",
        "at": WEDNESDAY, "precision": "day", "venue": None,
        "mode": "paraphrase", "attribution_verb": "criticized",
        "content": "What Lavrov called Western interference in potential peace processes: the United States "
                   "and some European nations continue to discourage Ukraine from engaging in dialogue.",
        "spans": [
            "Lavrov criticized what he called Western interference in potential peace processes, saying "
            "the United States and some European nations continue to discourage Ukraine from engaging in "
            "dialogue.",
        ],
        "claims": [
            claim("620b5904-cb2f-5f62-8c70-fa25d4cedab1", "russia", "western-intentions",
                  "the United States and some European nations interfere in peace processes and discourage "
                  "Ukraine from engaging in dialogue"),
        ],
    },
    {
        "name": "lavrov-west-wants-weakened-russia-quote",
        "statement_id": "67404747-111a-5f6f-9a88-465d18df4b53",
        "speaker_id": "sergey-lavrov", "on_behalf_of_id": "russia",
        "at": WEDNESDAY, "precision": "day", "venue": None,
        "mode": "direct_quote", "attribution_verb": "claimed",
        "content": "The West does not want peace; it wants a weakened Russia",
        "spans": ["The West does not want peace; it wants a weakened Russia", "Lavrov claimed"],
        "claims": [
            claim("276d1e99-2e1c-54f9-882b-afda681501ca", "russia", "western-intentions",
                  "the West does not want peace; it wants a weakened Russia"),
        ],
    },
    {
        "name": "ukrainian-government-no-formal-statement",
        "statement_id": "3a548778-fe24-5991-b8f8-fe82e75de38b",
        "speaker_id": "ukrainian-government", "on_behalf_of_id": "ukraine",
        "at": WEDNESDAY, "precision": "day", "venue": None,
        "mode": "reported_no_comment", "attribution_verb": "has not released any formal statement",
        "content": "Ukraine’s government has not released any formal statement in response to Lavrov’s "
                   "remarks.",
        "spans": ["Ukraine’s government has not released any formal statement in response to Lavrov’s remarks."],
        "claims": [
            claim("0ad7a1d4-76d9-537e-b573-edfec42f09f4", "ukraine", "response-to-istanbul-proposal",
                  "no formal statement in response to Lavrov’s remarks"),
        ],
    },
    {
        "name": "zelenskyy-administration-preconditions",
        "statement_id": "5d843626-2c2d-5663-b6a0-312f3206a920",
        "speaker_id": "zelenskyy-administration", "on_behalf_of_id": "ukraine",
        "at": YEAR_2024, "precision": "year", "venue": None,
        "mode": "reported", "attribution_verb": "has maintained",
        "content": "Any peace talks must include the withdrawal of Russian troops from occupied territories "
                   "and restoration of Ukraine’s territorial integrity, including Crimea. (A position "
                   "maintained over time; recorded with year precision.)",
        "spans": [
            "President Volodymyr Zelenskyy’s administration has maintained that any peace talks must "
            "include the withdrawal of Russian troops from occupied territories and restoration of "
            "Ukraine’s territorial integrity, including Crimea.",
        ],
        "claims": [
            claim("3a717861-2ad8-5a72-91bd-1b7664e8a9aa", "ukraine", "preconditions-for-talks",
                  "withdrawal of Russian troops from occupied territories and restoration of Ukraine’s "
                  "territorial integrity, including Crimea"),
        ],
    },
    {
        "name": "russia-accused-ukraine-of-bad-faith-2022",
        "statement_id": "5fc2667b-b37b-59cc-80e0-e1217712c200",
        "speaker_id": "russia", "on_behalf_of_id": None,
        "at": YEAR_2022, "precision": "year", "venue": None,
        "mode": "reported", "attribution_verb": "accused",
        "content": "Russia accused Ukraine of negotiating in bad faith when the 2022 talks in Istanbul broke "
                   "down without concrete progress.",
        "spans": [
            "Past rounds of talks in Istanbul broke down in 2022 without concrete progress, as both sides "
            "accused each other of negotiating in bad faith.",
        ],
        "claims": [
            claim("5ac47b4e-32d0-5f38-bf6d-ee605d25667f", "russia", "bad-faith-in-2022-talks",
                  "Ukraine negotiated in bad faith"),
        ],
    },
    {
        "name": "ukraine-accused-russia-of-bad-faith-2022",
        "statement_id": "9bbc4548-237f-5d66-9705-084f33e4ef0c",
        "speaker_id": "ukraine", "on_behalf_of_id": None,
        "at": YEAR_2022, "precision": "year", "venue": None,
        "mode": "reported", "attribution_verb": "accused",
        "content": "Ukraine accused Russia of negotiating in bad faith when the 2022 talks in Istanbul broke "
                   "down without concrete progress.",
        "spans": [
            "Past rounds of talks in Istanbul broke down in 2022 without concrete progress, as both sides "
            "accused each other of negotiating in bad faith.",
        ],
        "claims": [
            claim("78e348c5-fa20-5f57-ba9b-28b9c4880d95", "ukraine", "bad-faith-in-2022-talks",
                  "Russia negotiated in bad faith"),
        ],
    },
    {
        "name": "analysts-on-russia-motives",
        "statement_id": "4beec1dc-9ec1-5e8f-ae22-131128b3c8d4",
        "speaker_id": "analysts", "on_behalf_of_id": None,
        "at": JUNE_2024, "precision": "month", "venue": None,
        "mode": "reported", "attribution_verb": "suggest",
        "content": "Russia’s renewed call for talks may be aimed at easing growing international pressure "
                   "and potential sanctions while appearing to support a diplomatic path.",
        "spans": [
            "Analysts suggest Russia’s renewed call for talks may be aimed at easing growing international "
            "pressure and potential sanctions while appearing to support a diplomatic path.",
        ],
        "claims": [
            claim("7f5a5860-d952-551d-b8ad-8f73cab48778", "analysts", "russia-motives",
                  "the renewed call for talks may aim to ease international pressure and potential sanctions "
                  "while appearing to support a diplomatic path"),
        ],
    },
    {
        "name": "ukrainian-officials-stalling-tactic",
        "statement_id": "1ad39dcb-ed11-56a1-b698-9a7e57c8f705",
        "speaker_id": "ukrainian-officials", "on_behalf_of_id": "ukraine",
        "at": JUNE_2024, "precision": "month", "venue": None,
        "mode": "reported", "attribution_verb": "accusing",
        "content": "Ukrainian officials remain skeptical of Moscow’s intentions and accuse the Kremlin of "
                   "using negotiations as a stalling tactic.",
        "spans": [
            "Ukrainian officials remain skeptical of Moscow’s intentions, accusing the Kremlin of using "
            "negotiations as a stalling tactic.",
        ],
        "claims": [
            claim("61b9f3a8-b55a-5209-9139-946d6c551ce5", "ukrainian-officials", "russia-motives",
                  "the Kremlin is using negotiations as a stalling tactic"),
        ],
    },
    {
        "name": "ukrainian-officials-supply-lines",
        "statement_id": "956d1a46-e3d9-59d4-ba71-c7aad8e34e9d",
        "speaker_id": "ukrainian-officials", "on_behalf_of_id": "ukraine",
        "at": JUNE_2024, "precision": "month", "venue": None,
        "mode": "reported", "attribution_verb": "say",
        "content": "Ukrainian officials are focused on defending key supply lines while international "
                   "partners work to accelerate military aid deliveries.",
        "spans": [
            "Ukrainian officials say they are focused on defending key supply lines while international "
            "partners work to accelerate military aid deliveries.",
        ],
        "claims": [
            claim("7df04a02-fa27-56d8-b26c-0b514b95221c", "ukrainian-officials", "military-priorities",
                  "defending key supply lines"),
        ],
    },
    {
        "name": "western-leaders-resolution-by-ukraine",
        "statement_id": "161b2bee-29bf-5d1b-813c-a526d644066f",
        "speaker_id": "western-leaders", "on_behalf_of_id": None,
        "at": YEAR_2024, "precision": "year", "venue": None,
        "mode": "reported", "attribution_verb": "have consistently reiterated",
        "content": "Western leaders, including those from the United States, Germany and the United Kingdom: "
                   "any resolution must be determined by Ukraine and not imposed through external diplomacy. "
                   "(Reiterated over time; recorded with year precision.)",
        "spans": [
            "Western leaders, including those from the United States, Germany, and the United Kingdom, have "
            "consistently reiterated that any resolution must be determined by Ukraine and not imposed "
            "through external diplomacy.",
        ],
        "claims": [
            claim("746cc7aa-7a65-554e-a3ca-5c682099561a", "western-leaders", "peace-terms", RESOLUTION_BY_UKRAINE),
            claim("42bd95fe-ad13-5de8-9745-61d7787a6259", "united-states", "peace-terms", RESOLUTION_BY_UKRAINE),
            claim("d92b9374-2da8-5c77-8d54-753881f42b5e", "germany", "peace-terms", RESOLUTION_BY_UKRAINE),
            claim("bc1e36d8-f068-54d6-a447-a6c087adb9ef", "united-kingdom", "peace-terms", RESOLUTION_BY_UKRAINE),
        ],
    },
    {
        "name": "blinken-sovereignty",
        "statement_id": "f64a5867-387b-59ee-9282-5166c9c15fbc",
        "speaker_id": "antony-blinken", "on_behalf_of_id": "united-states",
        "at": YEAR_2024, "precision": "year", "venue": None,
        "mode": "paraphrase", "attribution_verb": "emphasized",
        "content": "Peace cannot come at the cost of Ukraine’s sovereignty. (Said “recently” before "
                   "publication; recorded with year precision.)",
        "spans": [
            "U.S. Secretary of State Antony Blinken recently emphasized that peace cannot come at the cost "
            "of Ukraine’s sovereignty.",
        ],
        "claims": [
            claim("fbaf109c-c5eb-5083-8c83-3260f8d8dbc8", "united-states", "sovereignty",
                  "peace cannot come at the cost of Ukraine’s sovereignty"),
        ],
    },
]


# ---------------------------------------------------------------------------------------------------
# Checks mirroring the server's rules (crates/domain/src/decide.rs, crates/domain/src/limits.rs).

SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
KINDS = {"state", "government", "organisation", "person", "group"}
PRECISIONS = {"instant", "day", "month", "year"}
MODES = {"direct_quote", "paraphrase", "reported", "official_document", "reported_no_comment"}


def check(ok: bool, message: str) -> None:
    if not ok:
        raise SystemExit(f"build_istanbul.py: {message}")


def check_slug(value: str, what: str) -> None:
    check(bool(SLUG.match(value)) and len(value) <= 64, f"{what} {value!r} is not a slug of at most 64 chars")


def check_text(value: str, what: str, max_len: int, single_line: bool = True) -> None:
    check(isinstance(value, str) and value.strip() != "", f"{what} must not be empty")
    check(len(value) <= max_len, f"{what} is {len(value)} chars, at most {max_len} allowed")
    if single_line:
        check(not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value), f"{what} has control characters")


def check_uuid(value: str, what: str) -> None:
    check(str(uuid.UUID(value)) == value and uuid.UUID(value).int != 0, f"{what} {value!r} is not a UUID")


def parse_time(value: str) -> datetime:
    check(value.endswith("Z"), f"time {value!r} must be UTC with a Z suffix")
    return datetime.fromisoformat(value[:-1]).replace(tzinfo=timezone.utc)


def truncated(at: datetime, precision: str) -> datetime:
    if precision == "instant":
        return at
    if precision == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    if precision == "month":
        return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return at.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)


def find_span(text: str, phrase: str) -> dict:
    """The span of `phrase` in `text`, which must occur exactly once (offsets in code points)."""
    start = text.find(phrase)
    check(start >= 0, f"span not found in the source text: {phrase!r}")
    check(text.find(phrase, start + 1) < 0, f"span occurs more than once in the source text: {phrase!r}")
    end = start + len(phrase)
    assert text[start:end] == phrase
    return {"source_id": SOURCE_ID, "start": start, "end": end, "exact": phrase}


def key(command_type: str, entity_id: str) -> str:
    k = f"{NAME}/{command_type}/{entity_id}"
    check(len(k) <= 128 and all(0x21 <= ord(c) < 0x7F for c in k), f"bad idempotency key {k!r}")
    return k


# ---------------------------------------------------------------------------------------------------

def build(text: str) -> dict:
    commands: list[dict] = []
    parties: set[str] = set()
    statements: set[str] = set()
    ids: set[str] = set()

    def new_id(value: str, what: str) -> None:
        check_uuid(value, what)
        check(value not in ids, f"{what} {value} is used twice")
        ids.add(value)

    for p in PARTIES:
        pid = p["party_id"]
        check_slug(pid, "party_id")
        check(pid not in parties, f"party {pid} registered twice")
        check(p["kind"] in KINDS, f"party {pid}: bad kind {p['kind']!r}")
        check_text(p["name"], f"party {pid} name", 200)
        check(len(p["aliases"]) <= 32, f"party {pid}: too many aliases")
        for a in p["aliases"]:
            check_text(a, f"party {pid} alias", 200)
        for a in p["affiliations"]:
            org = a["organisation_id"]
            check_slug(org, f"party {pid} affiliation organisation_id")
            check(org != pid, f"party {pid} is affiliated with itself")
            check(org in parties, f"party {pid}: affiliation {org} is not registered earlier")
            check_text(a["role"], f"party {pid} affiliation role", 200)
            if "since" in a and "until" in a:
                check(parse_time(a["until"]) >= parse_time(a["since"]), f"party {pid}: until before since")
        check(len(p["description"]) <= 2000, f"party {pid}: description too long")
        commands.append({"idempotency_key": key("register_party", pid),
                         "command": {"type": "register_party", **p}})
        parties.add(pid)

    published = parse_time(PUBLISHED_AT)
    check(parse_time(RETRIEVED_AT) >= published, "retrieved_at is before published_at")
    check(len(text.encode("utf-8")) <= 65536, "source text is too long")
    check(not any(ord(c) < 32 and c not in "\n\r\t" for c in text), "source text has control characters")
    new_id(SOURCE_ID, "source_id")
    commands.append({"idempotency_key": key("register_source", SOURCE_ID),
                     "command": {"type": "register_source", **SOURCE, "text": text}})

    for s in STATEMENTS:
        sid, name = s["statement_id"], s["name"]
        new_id(sid, f"statement {name}")
        for field in ("speaker_id", "on_behalf_of_id"):
            if s[field] is not None:
                check_slug(s[field], f"statement {name} {field}")
                check(s[field] in parties, f"statement {name}: {field} {s[field]} is not registered")
        check(s["precision"] in PRECISIONS, f"statement {name}: bad precision")
        at = parse_time(s["at"])
        check(at == truncated(at, s["precision"]), f"statement {name}: {s['at']} is not the start of its period")
        check(at <= published, f"statement {name}: stated time is after publication")
        if s["venue"] is not None:
            check_text(s["venue"], f"statement {name} venue", 500)
        check(s["mode"] in MODES, f"statement {name}: bad mode")
        check_text(s["attribution_verb"], f"statement {name} attribution_verb", 64)
        check_text(s["content"], f"statement {name} content", 4000, single_line=False)
        check(1 <= len(s["spans"]) <= 32, f"statement {name}: needs 1..32 spans")
        commands.append({
            "idempotency_key": key("record_statement", sid),
            "command": {
                "type": "record_statement",
                "statement_id": sid,
                "speaker_id": s["speaker_id"],
                "on_behalf_of_id": s["on_behalf_of_id"],
                "stated_time": {"at": s["at"], "precision": s["precision"]},
                "venue": s["venue"],
                "mode": s["mode"],
                "attribution_verb": s["attribution_verb"],
                "content": s["content"],
                "spans": [find_span(text, phrase) for phrase in s["spans"]],
                "reports_statement_id": None,
            },
        })
        statements.add(sid)

    for s in STATEMENTS:
        check(len(s["claims"]) >= 1, f"statement {s['name']} asserts no claim")
        for c in s["claims"]:
            cid = c["claim_id"]
            new_id(cid, f"claim on {s['name']}")
            check(s["statement_id"] in statements, f"claim {cid}: statement not recorded earlier")
            check_slug(c["party_id"], f"claim {cid} party_id")
            check(c["party_id"] in parties, f"claim {cid}: party {c['party_id']} is not registered")
            check_slug(c["topic"], f"claim {cid} topic")
            check_text(c["stance"], f"claim {cid} stance", 2000, single_line=False)
            check(len(c["conditions"]) <= 16, f"claim {cid}: too many conditions")
            for cond in c["conditions"]:
                check_text(cond, f"claim {cid} condition", 500, single_line=False)
            commands.append({
                "idempotency_key": key("assert_claim", cid),
                "command": {"type": "assert_claim", "claim_id": cid, "statement_id": s["statement_id"],
                            **{k: c[k] for k in ("party_id", "topic", "stance", "conditions")}},
            })

    keys = [c["idempotency_key"] for c in commands]
    check(len(keys) == len(set(keys)), "idempotency keys are not unique")
    return {"format": FORMAT, "name": NAME, "description": DESCRIPTION, "commands": commands}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="the source text file")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the dataset file to write")
    args = parser.parse_args()

    text = args.corpus.read_bytes().decode("utf-8")  # exact content: no newline translation
    dataset = build(text)
    with args.output.open("w", encoding="utf-8", newline="\n") as f:
        json.dump(dataset, f, ensure_ascii=False, indent=2)
        f.write("\n")
    count = {t: sum(c["command"]["type"] == t for c in dataset["commands"])
             for t in ("register_party", "register_source", "record_statement", "assert_claim")}
    print(f"wrote {args.output}: " + ", ".join(f"{n} {t}" for t, n in count.items()))


if __name__ == "__main__":
    main()
