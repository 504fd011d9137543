"""Seeded synthetic web documents with known noise, and expert outputs with realistic faults.

Tests, benchmarks and the demo need corpora whose right answer is known. Each document is
built from this module's own vocabulary and templates (no data files, no network): article
paragraphs on a topic, interleaved with the boilerplate a crawler picks up (navigation menus,
share/subscribe lines, cookie banners, bylines, timestamps, repeated footers, HTML debris,
mojibake, stray blank lines) and with ads spliced inside paragraph lines.

`clean` is `raw` with whole noise lines and spliced noise strings deleted, so it is exactly
what a perfect deletion-only refiner would produce (a subsequence of `raw`, no cross-line
edits). `expert` imitates an LLM asked to "remove the noise, change nothing else": most of
the time it equals `clean`, otherwise it carries the faults listed in `faults`, which the
distillation filters must tolerate (paraphrase, inserted words, re-wrapping), cannot detect
(missed noise, over-deletion) or must drop (heavy rewrite).

Everything is drawn from one `random.Random(seed)`: the same seed gives the same document.
"""

from __future__ import annotations

import math
import re
from bisect import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from random import Random
from string import Formatter
from types import MappingProxyType

__all__ = [
    "FAULT_RATES",
    "NOISE_KINDS",
    "SOURCES",
    "TOPICS",
    "SynthDoc",
    "generate_corpus",
    "generate_doc",
]

# Chance that a document's expert output has each fault. heavy_rewrite is drawn first and is
# exclusive (the whole output is rewritten); the others are drawn independently for the rest,
# so a document is fault-free with probability 0.97 * 0.9 * 0.92 * 0.88 * 0.94 * 0.9 ~ 0.60.
FAULT_RATES: Mapping[str, float] = MappingProxyType(
    {
        "heavy_rewrite": 0.03,
        "paraphrase": 0.10,
        "inserted_words": 0.08,
        "rewrapped": 0.12,
        "over_deletion": 0.06,
        "missed_noise": 0.10,
    }
)
NOISE_KINDS = (
    "nav", "share", "cookie", "ad", "html", "byline", "timestamp", "footer", "related", "mojibake", "blank",
)


@dataclass(frozen=True, slots=True)
class SynthDoc:
    doc_id: str
    source: str
    raw: str
    expert: str
    clean: str
    faults: tuple[str, ...]
    topic: str = ""
    noise_kinds: tuple[str, ...] = ()  # kinds present in raw, in NOISE_KINDS order


# --------------------------------------------------------------------------- templates

_Template = tuple[tuple[str, str | None], ...]


def _compile(template: str) -> _Template:
    """Split once into (literal, slot) pairs so filling a sentence is a join, not a parse."""
    return tuple((lit, name) for lit, name, _, _ in Formatter().parse(template))


def _templates(*texts: str) -> tuple[_Template, ...]:
    return tuple(_compile(t) for t in texts)


@dataclass(frozen=True, slots=True)
class _Topic:
    name: str
    fields: tuple[str, ...]            # "{field}": the subject area
    actors: tuple[str, ...]            # "{actors}": plural agents
    orgs: tuple[str, ...]
    roles: tuple[str, ...]             # "{role}": appositive after a person's name
    things: tuple[str, ...]            # "{thing}": singular noun phrase with its article
    objects: tuple[str, ...]           # "{object}": object of "{verb}"
    verbs: tuple[tuple[str, str], ...]  # (base form, past form)
    facts: tuple[_Template, ...]       # topic-specific sentences
    headlines: tuple[_Template, ...]


TOPICS: Mapping[str, _Topic] = MappingProxyType({t.name: t for t in (
    _Topic(
        "science",
        ("climate science", "astronomy", "genetics", "materials science", "marine biology", "particle physics"),
        ("researchers", "scientists", "astronomers", "biologists", "physicists", "chemists", "graduate students"),
        ("the University of Bristol", "the Max Planck Institute", "NASA", "the European Space Agency",
         "the Scripps Institution of Oceanography", "the Royal Society", "CERN"),
        ("the study's lead author", "a physicist at Imperial College", "a marine biologist",
         "a senior research fellow", "an astronomer who was not involved in the study"),
        ("the new telescope", "the experiment", "the climate model", "the gene-editing method",
         "the particle detector", "the long-term study", "the sample from the seabed"),
        ("the temperature of the deep ocean", "tiny changes in starlight", "the behaviour of cold atoms",
         "the spread of invasive species", "the chemistry of ancient rocks", "changes in the polar ice",
         "how cells repair their DNA"),
        (("measure", "measured"), ("observe", "observed"), ("study", "studied"), ("test", "tested"),
         ("map", "mapped"), ("model", "modelled")),
        _templates(
            "The telescope can detect light that is {num} times fainter than the human eye can see.",
            "Samples were stored at minus {num} degrees before they were tested.",
            "The team collected data from {num} sites across {place} over several years.",
            "The paper also showed that the effect was about {pct} percent larger in warmer water.",
            "Peer reviewers asked for more data, and the team spent another year on the analysis.",
        ),
        _templates(
            "New study shows how {actors} {verb} {object}",
            "{Org} reports {adj} progress in {field}",
            "Why {field} matters more than ever",
            "Scientists in {place} report {adj} findings",
            "What {thing} tells us about {object}",
        ),
    ),
    _Topic(
        "cooking",
        ("home cooking", "baking", "vegetarian cooking", "street food", "fermentation"),
        ("home cooks", "chefs", "bakers", "food writers", "restaurant owners", "nutritionists"),
        ("the Culinary Institute of America", "Le Cordon Bleu", "the local farmers' market",
         "the National Restaurant Association", "a family-run bakery"),
        ("the head chef at a bistro in Lyon", "a cookbook author", "a pastry chef",
         "the owner of a small restaurant", "a food writer"),
        ("the sourdough starter", "the slow cooker", "the new recipe", "a cast-iron pan",
         "the tasting menu", "the spice blend", "the weeknight pasta"),
        ("seasonal vegetables", "fresh herbs from the garden", "a simple tomato sauce", "whole-grain bread",
         "slow-roasted lamb", "a bowl of ramen", "the onions until golden"),
        (("prepare", "prepared"), ("cook", "cooked"), ("season", "seasoned"), ("roast", "roasted"),
         ("serve", "served"), ("combine", "combined")),
        _templates(
            "Preheat the oven to {oven} degrees and line a tray with baking paper.",
            "Add a pinch of salt and stir for about {small} minutes over a low heat.",
            "Let the dough rest for {small} hours, then shape it into a round loaf.",
            "The recipe serves {small} people and takes less than an hour from start to finish.",
            "Leftovers keep in the fridge for up to {small} days in a sealed container.",
        ),
        _templates(
            "The easy way to cook {object}",
            "{num} recipes for {field} you can make tonight",
            "How {actors} in {place} are changing {field}",
            "Why {thing} deserves a place in your kitchen",
            "Your {adj} guide to {field}",
        ),
    ),
    _Topic(
        "finance",
        ("global markets", "personal finance", "the housing market", "retail banking", "public pensions"),
        ("investors", "analysts", "economists", "traders", "small businesses", "pension funds", "households"),
        ("the Federal Reserve", "the European Central Bank", "the IMF", "Morningstar", "the Bank of England",
         "a Zürich asset manager"),
        ("a portfolio manager in New York", "the bank's chief economist", "an analyst at a London brokerage",
         "a financial planner", "a former central banker"),
        ("the interest rate decision", "the new tax rule", "the quarterly report", "the bond market",
         "the stock index", "the mortgage scheme"),
        ("their exposure to risk", "the cost of borrowing", "long-term savings", "inflation expectations",
         "quarterly earnings", "household budgets"),
        (("track", "tracked"), ("reduce", "reduced"), ("review", "reviewed"), ("forecast", "forecast"),
         ("hedge", "hedged"), ("manage", "managed")),
        _templates(
            "Shares rose {small}.{small} percent in early trading before giving back most of the gain.",
            "The central bank left its main rate unchanged at {small}.{small} percent.",
            "Revenue for the quarter came in at {money}, slightly above forecasts.",
            "Mortgage approvals fell for the {small}th month in a row, according to {org}.",
            "Inflation has now been above target for {num} consecutive months.",
        ),
        _templates(
            "Markets react as {org} holds rates",
            "What {thing} means for {actors}",
            "{Actors} expect {adj} times ahead in {field}",
            "How {actors} can {verb} {object}",
            "The {adj} case for {field}",
        ),
    ),
    _Topic(
        "sports",
        ("European football", "professional basketball", "Olympic athletics", "tennis", "cycling"),
        ("fans", "coaches", "players", "referees", "young athletes", "club officials"),
        ("FIFA", "the Premier League", "the NBA", "the International Olympic Committee", "FC Porto",
         "the national federation"),
        ("the team's head coach", "a former captain", "the club's sporting director", "a veteran defender",
         "a sports physiotherapist"),
        ("the new stadium", "the transfer window", "the final match", "the training camp",
         "the video referee system", "the youth academy"),
        ("the league title", "their defensive record", "the match schedule", "ticket prices",
         "the second half", "player workloads"),
        (("win", "won"), ("improve", "improved"), ("review", "reviewed"), ("change", "changed"),
         ("discuss", "discussed"), ("protect", "protected")),
        _templates(
            "The match ended {small}-{small} after a late goal in the {minute}th minute.",
            "More than {num},000 fans watched the game at the stadium in {place}.",
            "The striker has now scored {num} goals in all competitions this season.",
            "The team travels to {place} next week for the second leg.",
            "Ticket sales for the final sold out in less than {small} hours.",
        ),
        _templates(
            "{Org} confirms changes to {object}",
            "How {actors} in {place} {verbed} {object}",
            "{Adj} night for {field}",
            "Five things we learned from {thing}",
            "Why {thing} could decide the season",
        ),
    ),
    _Topic(
        "travel",
        ("rail travel", "city breaks", "adventure travel", "budget travel", "sustainable tourism"),
        ("travellers", "tourists", "hotel owners", "airlines", "backpackers", "local guides"),
        ("the national tourism board", "the city council", "UNESCO", "a regional rail operator",
         "the airport authority"),
        ("a travel writer", "a tour guide in Seville", "the hotel's manager", "a frequent flyer",
         "the head of the tourism board"),
        ("the new rail link", "the old town", "the coastal trail", "the night train", "the visitor centre",
         "the ferry route"),
        ("the busy summer season", "cheaper flights", "the historic centre", "local food markets",
         "their holiday plans", "the mountain villages"),
        (("visit", "visited"), ("explore", "explored"), ("book", "booked"), ("plan", "planned"),
         ("avoid", "avoided"), ("discover", "discovered")),
        _templates(
            "The journey from {place} takes about {small} hours by train.",
            "A double room costs from {money} a night, breakfast included.",
            "The museum is open daily except Mondays, and entry is free on the first Sunday of the month.",
            "Visitor numbers rose by {pct} percent last year, according to {org}.",
            "The best time to go is late spring, before the crowds arrive.",
        ),
        _templates(
            "{num} hours in {place}",
            "The {adj} guide to {field}",
            "Why {actors} are heading to {place}",
            "How to {verb} {object} without the crowds",
            "{Thing}: the {adj} way to see {place}",
        ),
    ),
    _Topic(
        "tech",
        ("open-source software", "cloud computing", "cybersecurity", "mobile apps", "machine learning"),
        ("developers", "engineers", "startups", "users", "security researchers", "IT teams"),
        ("the Linux Foundation", "Mozilla", "a Berlin startup", "the W3C", "OpenStreetMap", "a chip maker in Osaka"),
        ("a software engineer", "the company's chief technology officer", "a security researcher",
         "an open-source maintainer", "a product manager"),
        ("the new chip", "the software update", "the open-source library", "the app", "the data centre",
         "the programming language"),
        ("battery life", "the login process", "older devices", "large datasets", "security flaws",
         "cloud costs"),
        (("build", "built"), ("test", "tested"), ("fix", "fixed"), ("improve", "improved"),
         ("support", "supported"), ("deploy", "deployed")),
        _templates(
            "The update is {num} megabytes and installs in under {small} minutes.",
            "Version {small}.{small} also drops support for devices older than {year}.",
            "The library is downloaded about {num},000 times a week.",
            "Benchmarks showed the new chip was {pct} percent faster on common tasks.",
            "The bug was reported in {year} but was not fixed until this month.",
        ),
        _templates(
            "{Org} releases {thing}",
            "How {actors} {verbed} {object}",
            "Why {field} is harder than it looks",
            "{Thing} promises {adj} gains for {actors}",
            "Inside the race to {verb} {object}",
        ),
    ),
    _Topic(
        "health",
        ("public health", "nutrition", "mental health", "sleep research", "primary care"),
        ("doctors", "nurses", "patients", "public health officials", "researchers", "parents"),
        ("the World Health Organization", "the NHS", "the Mayo Clinic", "a regional hospital",
         "the national health institute"),
        ("a general practitioner", "a cardiologist", "the hospital's chief nurse", "a sleep researcher",
         "a professor of public health"),
        ("the new vaccine", "the screening programme", "the clinical trial", "the diet plan",
         "the walking programme", "the new guideline"),
        ("blood pressure", "the risk of heart disease", "sleep quality", "waiting times",
         "childhood obesity", "daily stress"),
        (("reduce", "reduced"), ("monitor", "monitored"), ("treat", "treated"), ("study", "studied"),
         ("lower", "lowered"), ("track", "tracked")),
        _templates(
            "The trial followed {num} adults for {small} years.",
            "Participants who walked {num} minutes a day had lower blood pressure on average.",
            "The risk fell by about {pct} percent in the group that took the supplement.",
            "Waiting times at {org} have doubled since {year}.",
            "Adults need between seven and nine hours of sleep a night, the guideline says.",
        ),
        _templates(
            "New guidance on {object} from {org}",
            "What {thing} means for {actors}",
            "How {actors} can {verb} {object}",
            "The {adj} truth about {field}",
            "Doctors in {place} report {adj} results",
        ),
    ),
)})

# Sentences any topic can use; the synonym words below occur often so paraphrases have targets.
_GENERIC = _templates(
    "{Actors} at {org} {verbed} {object} {time}, and the results were {adj}.",
    "{Person}, {role}, said the findings could help {actors} {verb} {object} more quickly.",
    "\"{Quote},\" said {person}, {role}.",
    "\"{Quote},\" {person} explained.",
    "The work builds on earlier research from {org}, which {verbed} {object} in {year}.",
    "{Thing} is one of the most important changes in {field} since {year}.",
    "About {pct} percent of {actors} surveyed said they {verb} {object} at least once a week.",
    "In {place}, {actors} have started to {verb} {object} with new tools.",
    "Many {actors} still find it hard to {verb} {object} without support from {org}.",
    "The {adj} part, according to {person}, is that {thing} costs less than {money}.",
    "{Thing} also showed that small changes can make a big difference.",
    "Over the past {small} years, {field} has changed in ways few people expected.",
    "Critics argue that {thing} raises new problems for {actors} in {place}.",
    "{Org} plans to publish a full report on {object} {future}.",
    "For now, {actors} need more data before they can {verb} {object} with confidence.",
    "The project started in {year} with a budget of {money} and a team of {num} people.",
    "Readers who want to learn more can find {adj} guides from {org}.",
    "{Person} said the next step is to {verb} {object} in {place}.",
    "It is still unclear whether {thing} will help {actors} in the long run.",
    "One {adj} finding was that {actors} in {place} {verbed} {object} about {pct} percent faster.",
    "This is not the first time {actors} have tried to {verb} {object}.",
    "Still, {person} believes {thing} is a good example of how {field} can improve.",
    "The numbers are {adj}: {small} out of every ten {actors} reported a change.",
    "{Actors} often use {thing} to {verb} {object}.",
    "Several {actors} said the biggest problem was time, not money.",
    "When {org} first tested {thing}, the results surprised almost everyone.",
    "There are also important questions about cost, safety and access.",
    "By {future_year}, {pct} percent of {actors} in {place} are expected to {verb} {object}.",
    "{Person} first became interested in {field} while working in {place}.",
    "The main problem, {person} said, is that {object} is very hard to {verb}.",
    "Supporters say {thing} is easy to use and helps people save time.",
    "Others are less convinced, pointing to the high cost of {thing}.",
)
_QUOTES = _templates(
    "this is an important step for {field}",
    "we did not expect the results to be this clear",
    "the next few years will be very important",
    "it is a small change, but it makes a big difference",
    "people need simple answers, and this helps",
    "we still have a lot of work to do",
    "nobody thought {thing} would work this well",
    "the real test is whether {actors} actually use it",
)
_FIRST = ("Anna", "James", "María", "Wei", "Olivia", "Kwame", "Sofia", "Lukas", "Priya", "Daniel", "Chloé",
          "Hiroshi", "Fatima", "Mateo", "Ingrid", "Samuel", "Aisha", "Tomás", "Elena", "Noah", "Zoë", "Ravi",
          "Grace", "Jonas")
_LAST = ("Smith", "García", "Chen", "Okafor", "Müller", "Rossi", "Kowalski", "Nguyen", "Patel", "Johansson",
         "Dubois", "Tanaka", "Haddad", "Silva", "Brown", "Novak", "O'Brien", "Fischer", "Kim", "Andersen",
         "Moreau", "Costa", "Ibrahim", "Walsh")
_PLACES = ("London", "Lyon", "Zürich", "São Paulo", "Kraków", "Toronto", "Nairobi", "Osaka", "Melbourne",
           "Chicago", "Reykjavík", "Bogotá", "Seville", "Hanoi", "Cape Town", "Lisbon", "Vancouver")
_ADJ = ("encouraging", "surprising", "clear", "mixed", "promising", "striking", "modest", "strong",
        "important", "unusual")
_TIME = ("last week", "last month", "earlier this year", "in a study published on Monday", "over the summer",
         "in 2019", "in 2021", "during the pandemic", "this spring")
_FUTURE = ("later this year", "next spring", "by the end of the decade", "within two years", "next month")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")

# Single-word synonyms: a paraphrase swaps words one for one.
_SYNONYMS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "important": ("significant", "crucial"), "new": ("novel", "recent"), "showed": ("demonstrated", "revealed"),
    "said": ("stated", "remarked"), "use": ("utilize", "employ"), "help": ("assist", "aid"),
    "helps": ("assists", "aids"), "many": ("numerous", "countless"), "found": ("discovered", "identified"),
    "improve": ("enhance", "strengthen"), "results": ("findings", "outcomes"), "people": ("individuals",),
    "often": ("frequently", "regularly"), "also": ("additionally", "likewise"), "very": ("extremely", "highly"),
    "big": ("large", "major"), "small": ("minor", "modest"), "quickly": ("rapidly", "swiftly"),
    "started": ("commenced",), "problem": ("issue", "difficulty"), "problems": ("issues", "difficulties"),
    "easy": ("simple", "straightforward"), "hard": ("difficult", "tough"), "changes": ("shifts", "alterations"),
    "main": ("primary", "principal"), "believes": ("thinks", "holds"), "expected": ("anticipated", "predicted"),
    "biggest": ("largest", "greatest"), "learn": ("discover", "explore"), "need": ("require", "want"),
})
_SYN_RE = re.compile(r"\b(?:" + "|".join(sorted(_SYNONYMS, key=len, reverse=True)) + r")\b", re.IGNORECASE)

class _Filler:
    """Fills template slots for one document (one rng, one topic, one publication)."""

    __slots__ = ("rng", "topic", "brand")

    def __init__(self, rng: Random, topic: _Topic, brand: str) -> None:
        self.rng, self.topic, self.brand = rng, topic, brand

    def render(self, template: _Template) -> str:
        out = []
        for lit, name in template:
            out.append(lit)
            if name:
                value = _SLOTS[name.lower()](self)
                out.append(value[0].upper() + value[1:] if name[0].isupper() else value)
        return "".join(out)

    def pick(self, templates: Sequence[_Template]) -> str:
        return self.render(self.rng.choice(templates))

    def sentence(self) -> str:
        return self.pick(self.topic.facts if self.rng.random() < 0.15 else _GENERIC)

    def person(self) -> str:
        return f"{self.rng.choice(_FIRST)} {self.rng.choice(_LAST)}"


def _money(f: _Filler) -> str:
    return f"{f.rng.choice('$€£')}{f.rng.randint(2, 950)} {f.rng.choice(('million', 'million', 'billion', 'thousand'))}"


_PRODUCTS = ("ZenBook laptops", "SmartHome thermostats", "organic meal kits", "premium travel insurance",
             "noise-cancelling headphones", "a commission-free trading app", "ergonomic office chairs",
             "vitamin supplements")
_DEALS = ("free shipping", "50% off", "a free trial", "two months free", "an exclusive discount")
_SLOTS: Mapping[str, Callable[[_Filler], str]] = MappingProxyType({
    "actors": lambda f: f.rng.choice(f.topic.actors),
    "org": lambda f: f.rng.choice(f.topic.orgs),
    "role": lambda f: f.rng.choice(f.topic.roles),
    "thing": lambda f: f.rng.choice(f.topic.things),
    "object": lambda f: f.rng.choice(f.topic.objects),
    "field": lambda f: f.rng.choice(f.topic.fields),
    "verb": lambda f: f.rng.choice(f.topic.verbs)[0],
    "verbed": lambda f: f.rng.choice(f.topic.verbs)[1],
    "headline": lambda f: f.pick(f.topic.headlines),
    "quote": lambda f: f.pick(_QUOTES),
    "person": _Filler.person,
    "place": lambda f: f.rng.choice(_PLACES),
    "adj": lambda f: f.rng.choice(_ADJ),
    "time": lambda f: f.rng.choice(_TIME),
    "future": lambda f: f.rng.choice(_FUTURE),
    "num": lambda f: str(f.rng.randint(3, 250)),
    "small": lambda f: str(f.rng.randint(2, 9)),
    "oven": lambda f: str(f.rng.randrange(160, 241, 10)),
    "minute": lambda f: str(f.rng.randint(84, 90)),
    "pct": lambda f: str(f.rng.randint(5, 95)),
    "year": lambda f: str(f.rng.randint(1998, 2024)),
    "future_year": lambda f: str(f.rng.randint(2026, 2040)),
    "money": _money,
    "brand": lambda f: f.brand,
    "product": lambda f: f.rng.choice(_PRODUCTS),
    "deal": lambda f: f.rng.choice(_DEALS),
})

# --------------------------------------------------------------------------- noise


@dataclass(frozen=True, slots=True)
class _Source:
    name: str
    brand: str
    topics: tuple[str, ...]
    sections: tuple[str, ...]
    noise_ratio: tuple[float, float]   # share of raw chars that is noise
    wrap: float                        # chance that the site hard-wraps paragraphs
    weights: Mapping[str, float]       # how often each noise kind is drawn


_BASE_WEIGHTS = {"nav": 1.0, "share": 1.0, "cookie": 0.6, "ad": 1.5, "html": 1.0, "byline": 0.6,
                 "timestamp": 0.6, "footer": 0.8, "related": 0.6, "mojibake": 0.4, "blank": 1.0}


def _source(name: str, brand: str, topics: tuple[str, ...], sections: tuple[str, ...],
            noise_ratio: tuple[float, float], wrap: float, **boost: float) -> _Source:
    weights = {k: v * boost.get(k, 1.0) for k, v in _BASE_WEIGHTS.items()}
    return _Source(name, brand, topics, sections, noise_ratio, wrap, MappingProxyType(weights))


# Sites differ in topic, layout and how much and which boilerplate they carry, so per-source
# statistics and stratified samples have something to show.
SOURCES: tuple[_Source, ...] = (
    _source("dailyherald.example", "Daily Herald", ("science", "finance", "sports", "travel", "health"),
            ("Home", "World", "Business", "Sports", "Science", "Travel", "Opinion", "Video", "Subscribe"),
            (0.2, 0.4), 0.1, byline=2.0, timestamp=2.0),
    _source("kitchenlab.example", "Kitchen Lab", ("cooking", "health"),
            ("Recipes", "Dinner", "Baking", "Vegetarian", "Techniques", "Shop", "Newsletter"),
            (0.25, 0.45), 0.0, ad=2.5, share=2.0, cookie=1.5),
    _source("techpulse.example", "TechPulse", ("tech", "science"),
            ("News", "Reviews", "Security", "Cloud", "AI", "Deals", "Podcasts"),
            (0.15, 0.4), 0.2, html=3.0, related=1.5),
    _source("marketwire.example", "MarketWire", ("finance", "tech"),
            ("Markets", "Stocks", "Bonds", "Currencies", "Economy", "Personal Finance", "Watchlist"),
            (0.15, 0.35), 0.6, timestamp=3.0, footer=1.5),
    _source("wanderlog.example", "Wanderlog", ("travel", "cooking"),
            ("Destinations", "Europe", "Asia", "Americas", "Itineraries", "Gear", "About"),
            (0.2, 0.4), 0.2, mojibake=4.0, related=2.0),
    _source("labnotes.example", "Lab Notes", ("science", "health"),
            ("Physics", "Biology", "Space", "Earth", "Archive", "About"),
            (0.08, 0.2), 0.8, blank=2.0),
    _source("sportsdesk.example", "SportsDesk", ("sports",),
            ("Football", "Basketball", "Tennis", "Cycling", "Results", "Fixtures", "Live"),
            (0.2, 0.4), 0.1, nav=2.0, ad=1.5),
)

_MAX_PER_DOC = {"cookie": 1, "byline": 2, "timestamp": 2}  # once-per-page furniture
_INLINE_SHARE = {"ad": 0.75, "html": 0.35}  # chance an ad / HTML piece is spliced into a paragraph

_AD_INLINE = _templates(
    " Advertisement: {product} — {deal}!", " [Sponsored] {Product}: {deal}.", " Click here to get {deal} on {product}!",
    " ADVERTISEMENT", " (Ad) {Product} from {money}.", " — Story continues below advertisement —",
)
_AD_LINES = ("Advertisement", "ADVERTISEMENT", "Sponsored content", "Story continues below advertisement",
             "Advertisement - Scroll to continue")
_HTML_INLINE = (" &nbsp;", " <br>", " </span>", " <b>", " &#8203;", ' <a href="#">', " &amp;nbsp;")
_HTML_LINES = _templates(
    '<div class="ad-slot" id="div-gpt-ad-{num}">', "</div>", "<!-- wp:paragraph -->", "<!-- /wp:paragraph -->",
    '<script>googletag.cmd.push(function() {{ googletag.display("ad-{num}"); }});</script>',
    '<iframe src="https://ads.example/frame?id={num}" width="300" height="250"></iframe>',
    "&nbsp;", "<br /><br />", '<span class="caption">Image: {brand}</span>', "{{{{ related_posts }}}}",
    '<img src="/static/img/spacer.gif" alt="">', "<noscript>Please enable JavaScript to view the comments.</noscript>",
)
_SCRIPT_PIECE = "window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments)}gtag('js',new Date());"
_SHARE = _templates(
    "Share this article", "Share on Facebook | Share on Twitter | Share via Email", "Share  Tweet  Pin  Email",
    "Subscribe to our newsletter for the latest {field} news.", "Sign up for the {brand} newsletter — it's free!",
    "Follow {brand} on Twitter, Instagram and Facebook.", "Click to share on WhatsApp (Opens in new window)",
    "Print this article", "{num} Comments", "Like this story? Share it with a friend.",
)
_RELATED = _templates(
    "Related: {headline}", "Read more: {headline}", "You may also like", "Trending now", "More from {brand}",
    "Recommended for you: {headline}", "Most popular: {headline} | {headline}",
)
_BYLINES = _templates(
    "By {person}", "By {person}, {brand} Staff", "Written by {person} | Contributor", "By {person} and {person}",
    "Reporting by {person}; Editing by {person}", "{person} — Senior Correspondent",
)
_FOOTERS = _templates(
    "© {year} {brand} Media Group. All rights reserved.", "About Us | Contact | Careers | Advertise | Privacy Policy | Terms of Service",
    "{brand} is not responsible for the content of external sites.", "Back to top ↑",
    "Do Not Sell or Share My Personal Information", "Registered in England and Wales. No. {num}{num}{num}.",
)
_COOKIE = (
    ("We use cookies to improve your experience on our site.",
     "This website uses cookies to personalise content and ads and to analyse our traffic.",
     "We and our partners store and access information on your device, such as cookies."),
    ("By continuing to browse, you agree to our use of cookies.",
     "You can change your preferences at any time in Cookie Settings.", "Read our Privacy Policy to learn more."),
    ("Accept all | Reject all | Manage preferences", "ACCEPT COOKIES", "Got it!", "OK  |  More info"),
)
_BLANKS = ("", "", "", " ", "   ", "\t")


def _cp1252_mojibake(text: str) -> str:
    """UTF-8 bytes read as Windows-1252 (the usual 'Ã©' damage); undefined bytes show as U+FFFD."""
    return "".join(bytes([b]).decode("cp1252", errors="replace") for b in text.encode("utf-8"))


_MOJIBAKE_SOURCES = (
    "Résumé de l'été à Paris", "Café crème et crème brûlée", "São Paulo — Zürich — Kraków",
    "“Smart quotes” don’t survive a bad export", "Größe und Übersicht der Straße", "Preis: 12,50 € inkl. MwSt.",
    "Señor Muñoz llegó a la reunión", "naïve façade, déjà vu", "Copyright © 2021 Société Générale",
)
_MOJIBAKE = tuple(m for s in _MOJIBAKE_SOURCES for m in (_cp1252_mojibake(s), _cp1252_mojibake(_cp1252_mojibake(s))))


@dataclass(frozen=True, slots=True)
class _Style:
    """One page's fixed furniture: repeated occurrences of nav, footer, byline are identical."""

    source: _Source
    kinds: tuple[str, ...]
    cum_weights: tuple[float, ...]
    nav: tuple[str, ...]
    footer: tuple[str, ...]
    byline: tuple[str, ...]
    timestamp: tuple[str, ...]
    cookie: tuple[str, ...]
    wrap: int  # 0: one line per paragraph


def _timestamp(rng: Random) -> str:
    y, mo, d, h, mi = rng.randint(2015, 2025), rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59)
    month = _MONTHS[mo - 1]
    return rng.choice((
        f"Published {month} {d}, {y} at {(h % 12) or 12}:{mi:02d} {'AM' if h < 12 else 'PM'} ET",
        f"Updated: {y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:00Z",
        f"{d} {month} {y}, {h:02d}:{mi:02d} GMT",
        f"Last modified on {d} {month} {y}",
        f"{rng.randint(2, 15)} min read · {month[:3]} {d}, {y}",
        f"Posted {rng.randint(2, 23)} hours ago",
    ))


def _draw_style(f: _Filler, src: _Source) -> _Style:
    rng = f.rng
    sections = rng.sample(src.sections, rng.randint(4, len(src.sections)))
    nav = [rng.choice((" | ", " · ", "  ", " / ")).join(["Home", *sections])]
    if rng.random() < 0.4:
        nav.insert(0, rng.choice(("Skip to main content", "Skip to content", "Menu", "Search  Sign in")))
    if rng.random() < 0.3:
        nav.append(f"Home > {sections[0]} > {f.topic.name.capitalize()}")
    cookie = [rng.choice(part) for part in _COOKIE[: rng.randint(1, 3)]]
    if rng.random() < 0.5:
        cookie = [" ".join(cookie)]
    kinds = tuple(src.weights)
    return _Style(
        source=src,
        kinds=kinds,
        cum_weights=tuple(accumulate(src.weights[k] for k in kinds)),
        nav=tuple(nav),
        footer=tuple(f.render(t) for t in rng.sample(_FOOTERS, rng.randint(2, 4))),
        byline=(f.pick(_BYLINES),),
        timestamp=(_timestamp(rng),),
        cookie=tuple(cookie),
        wrap=rng.randint(60, 100) if rng.random() < src.wrap else 0,
    )


def _noise_block(kind: str, style: _Style, f: _Filler, budget: float) -> tuple[str, ...]:
    rng = f.rng
    if kind in ("nav", "footer", "byline", "timestamp", "cookie"):
        return getattr(style, kind)
    if kind == "share":
        return tuple(f.pick(_SHARE) for _ in range(rng.choice((1, 1, 2))))
    if kind == "related":
        return tuple(f.pick(_RELATED) for _ in range(rng.randint(1, 3)))
    if kind == "ad":
        return (rng.choice(_AD_LINES),)
    if kind == "html":
        # Large pages sometimes carry an inline script blob, long enough to be shown truncated.
        if budget > 4000 and rng.random() < 0.1:
            return (_SCRIPT_PIECE * rng.randint(15, 60),)
        return tuple(f.pick(_HTML_LINES) for _ in range(rng.randint(1, 3)))
    if kind == "mojibake":
        return (" ".join(rng.sample(_MOJIBAKE, rng.randint(1, 3))),)
    return (rng.choice(_BLANKS),) * rng.randint(1, 2)  # blank


# --------------------------------------------------------------------------- document


@dataclass(slots=True)
class _Para:
    text: str                                                   # clean paragraph, "\n" where wrapped
    inserts: list[tuple[int, str]] = field(default_factory=list)  # (offset in text, spliced noise)

    def spliced(self, inserts: Sequence[tuple[int, str]]) -> str:
        pieces, prev = [], 0
        for off, s in sorted(inserts, key=lambda p: p[0]):  # stable: same offset keeps draw order
            pieces += (self.text[prev:off], s)
            prev = off
        pieces.append(self.text[prev:])
        return "".join(pieces)


@dataclass(frozen=True, slots=True)
class _Noise:
    kind: str
    lines: tuple[str, ...]


def _wrap(text: str, width: int) -> str:
    """Greedy hard wrap that only turns spaces into newlines (so it is a whitespace-only change)."""
    lines, start = [], 0
    while len(text) - start > width:
        cut = text.rfind(" ", start, start + width + 1)
        if cut <= start:
            cut = text.find(" ", start + width)
            if cut == -1:
                break
        lines.append(text[start:cut])
        start = cut + 1
    lines.append(text[start:])
    return "\n".join(lines)


def _body(f: _Filler, wrap: int, budget: float) -> list[_Para]:
    """Paragraphs of 2-7 sentences until about `budget` chars (always at least one sentence)."""
    paras: list[_Para] = []
    used = 0
    while not paras or used < budget:
        sentences: list[str] = []
        for _ in range(f.rng.randint(2, 7)):
            sentences.append(f.sentence())
            used += len(sentences[-1]) + 1
            if used >= budget:
                break
        used += 1  # a paragraph costs its text plus "\n\n" before it
        text = " ".join(sentences)
        paras.append(_Para(_wrap(text, wrap) if wrap else text))
    return paras


def _gap_for(kind: str, seen: int, n_paras: int, rng: Random) -> int:
    """Where a noise block goes: gap 0 is above the title, 1 below it, k + 2 after paragraph k."""
    end = n_paras + 1
    if seen == 0 and kind in ("nav", "byline", "timestamp"):
        return 0 if kind == "nav" else 1
    if kind == "cookie":
        return rng.choice((0, end))
    if kind == "footer" and (seen == 0 or rng.random() < 0.5):
        return end  # the second time: the same footer twice at the bottom of the page
    if kind in ("nav", "footer"):
        return rng.randint(2, end)  # page boundaries of a multi-page scrape
    return rng.randint(1, end)


def _add_noise(f: _Filler, style: _Style, paras: list[_Para], gaps: list[list[_Noise]],
               budget: float, slack: float) -> set[str]:
    """Draw noise until about `budget` chars: blocks into gaps, ads and HTML spliced into paragraphs."""
    rng = f.rng
    counts = dict.fromkeys(NOISE_KINDS, 0)
    used, misses = 0, 0
    while used < budget - 8 and misses < 25:  # small pieces fill the tail; stop after many misfits in a row
        kind = style.kinds[bisect(style.cum_weights, rng.random() * style.cum_weights[-1])]
        if counts[kind] >= _MAX_PER_DOC.get(kind, math.inf):
            misses += 1
            continue
        inline = kind in _INLINE_SHARE and rng.random() < _INLINE_SHARE[kind]
        if inline:
            piece = f.pick(_AD_INLINE) if kind == "ad" else rng.choice(_HTML_INLINE)
            lines, cost = (piece,), len(piece)
        else:
            lines = _noise_block(kind, style, f, budget - used)
            cost = sum(len(line) + 1 for line in lines)
        if used + cost > budget + slack:
            misses += 1
            continue
        if inline:
            # Every piece starts with a space and goes before a space, so removing it leaves
            # the sentence exactly as it was.
            para = rng.choice(paras)
            at = para.text.find(" ", rng.randrange(len(para.text)))
            para.inserts.append((at if at >= 0 else len(para.text), piece))
        else:
            gaps[_gap_for(kind, counts[kind], len(paras), rng)].append(_Noise(kind, lines))
        used, misses = used + cost, 0
        counts[kind] += 1
    return {k for k, n in counts.items() if n}


def _assemble(title: str, paras: Sequence[str | None], gaps: Sequence[Sequence[_Noise]],
              noise: Callable[[_Noise], Sequence[str]]) -> str:
    """Lay out a page; paragraphs given as None are left out with their blank separator line."""
    parts: list[str] = []
    for item in gaps[0]:
        parts += noise(item)
    parts.append(title)
    for item in gaps[1]:
        parts += noise(item)
    for k, text in enumerate(paras):
        if text is not None:
            parts += ("", text)
        for item in gaps[k + 2]:
            parts += noise(item)
    return "\n".join(parts)


# --------------------------------------------------------------------------- expert faults

_SENT_END = re.compile(r"(?<=[.!?])[ \n]")
_TAILS = (" as well", ", as expected", ", experts say", ", it seems", ", in fact", ", according to the report")
_FILLERS = ("Moreover, this is worth noting.", "That is a key point.", "Experts have long debated this.",
            "This matters for everyone.", "The implications are significant.", "In other words, it works.")
_OPENERS = ("Here is a summary of the key points.", "In short, the story is about progress and its limits.",
            "To put it simply, a lot has changed.", "Overall, the picture is a hopeful one.",
            "The following section explains what happened.")


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _SENT_END.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return spans


def _cuttable_sentences(text: str) -> list[tuple[int, int]]:
    """Sentences inside one line, each with one neighbouring space: cutting one keeps the lines intact."""
    cuts = []
    for start, end in _sentence_spans(text):
        if "\n" in text[start:end]:
            continue
        if text[end:end + 1] == " ":
            cuts.append((start, end + 1))
        elif text[start - 1:start] == " ":
            cuts.append((start - 1, end))
    return cuts


def _synonym(rng: Random, word: str) -> str:
    alt = rng.choice(_SYNONYMS[word.lower()])
    return alt[0].upper() + alt[1:] if word[0].isupper() else alt


def _heavy_rewrite(rng: Random, title: str, texts: Sequence[str]) -> str:
    """An end-to-end rewrite: reordered, reworded and summarised; no deletion program explains it."""
    parts = [title]
    for text in texts:
        sentences = [_SYN_RE.sub(lambda m: _synonym(rng, m.group()), text[s:e].replace("\n", " "))
                     for s, e in _sentence_spans(text)]
        rng.shuffle(sentences)
        if len(sentences) > 2:
            sentences.pop()
        sentences.insert(0, rng.choice(_OPENERS))
        parts += ("", " ".join(sentences))
    return "\n".join(parts)


class _ExpertDraft:
    """The clean page as an expert would return it, with faults applied one at a time."""

    def __init__(self, rng: Random, paras: Sequence[_Para], gaps: Sequence[Sequence[_Noise]]) -> None:
        self.rng, self.paras, self.gaps = rng, paras, gaps
        self.texts: list[str | None] = [p.text for p in paras]
        self.touched: set[int] = set()
        self.kept: tuple[_Noise, int] | None = None  # noise line the expert failed to remove

    def _live(self) -> list[tuple[int, str]]:
        return [(k, t) for k, t in enumerate(self.texts) if t is not None]

    def _pick(self, ok: Callable[[str], bool]) -> tuple[int, str] | None:
        """A random live paragraph passing `ok`; probing a bounded sample keeps 1 MB pages fast."""
        live = self._live()
        return next((kt for kt in self.rng.sample(live, min(len(live), 40)) if ok(kt[1])), None)

    def _set(self, k: int, text: str | None) -> bool:
        self.texts[k] = text
        self.touched.add(k)
        return True

    def paraphrase(self) -> bool:
        if (picked := self._pick(lambda t: _SYN_RE.search(t) is not None)) is None:
            return False
        k, text = picked
        hits = list(_SYN_RE.finditer(text))
        first = self.rng.choice(hits).start()
        near = sorted((m for m in hits if abs(m.start() - first) <= 150), key=lambda m: abs(m.start() - first))
        for m in sorted(near[: self.rng.randint(1, 3)], key=lambda m: m.start(), reverse=True):
            text = text[: m.start()] + _synonym(self.rng, m.group()) + text[m.end():]
        return self._set(k, text)

    def inserted_words(self) -> bool:
        if (picked := self._pick(lambda t: True)) is None:
            return False
        k, text = picked
        _, end = self.rng.choice(_sentence_spans(text))
        if text[end - 1] in ".!?" and self.rng.random() < 0.5:
            return self._set(k, text[: end - 1] + self.rng.choice(_TAILS) + text[end - 1:])
        return self._set(k, text[:end] + " " + self.rng.choice(_FILLERS) + text[end:])

    def rewrapped(self) -> bool:
        if (picked := self._pick(lambda t: "\n" in t or len(t) > 120)) is None:
            return False
        k, text = picked
        if "\n" not in text:
            new = _wrap(text, self.rng.randint(50, 90))
        elif self.rng.random() < 0.5:
            new = text.replace("\n", " ")
        else:
            at = self.rng.choice([i for i, c in enumerate(text) if c == "\n"])
            new = text[:at] + " " + text[at + 1:]
        return new != text and self._set(k, new)

    def over_deletion(self) -> bool:
        if (picked := self._pick(lambda t: bool(_cuttable_sentences(t)))) is None:
            live = self._live()  # no sentence can go on its own: lose a whole paragraph instead
            return len(live) > 1 and self._set(self.rng.choice(live)[0], None)
        k, text = picked
        start, end = self.rng.choice(_cuttable_sentences(text))
        return self._set(k, text[:start] + text[end:])

    def missed_noise(self) -> bool:
        lines = [(item, i) for gap in self.gaps for item in gap if item.kind != "blank" for i in range(len(item.lines))]
        # A spliced piece can only be left in where no other fault moved the text around it.
        inline = [(k, ins) for k, p in enumerate(self.paras)
                  if k not in self.touched and self.texts[k] is not None for ins in p.inserts]
        if not lines and not inline:
            return False
        j = self.rng.randrange(len(lines) + len(inline))
        if j < len(lines):
            self.kept = lines[j]
            return True
        k, ins = inline[j - len(lines)]
        return self._set(k, self.paras[k].spliced([ins]))

    def render(self, title: str) -> str:
        kept = self.kept
        return _assemble(title, self.texts, self.gaps,
                         lambda item: (item.lines[kept[1]],) if kept and item is kept[0] else ())


# Applied in this order, so that no fault undoes an earlier one (a deletion could remove inserted
# words) and missed_noise knows which paragraphs the others touched.
_EDIT_FAULTS: Mapping[str, Callable[[_ExpertDraft], bool]] = MappingProxyType({
    "over_deletion": _ExpertDraft.over_deletion,
    "paraphrase": _ExpertDraft.paraphrase,
    "inserted_words": _ExpertDraft.inserted_words,
    "rewrapped": _ExpertDraft.rewrapped,
    "missed_noise": _ExpertDraft.missed_noise,
})


def _expert(rng: Random, title: str, paras: Sequence[_Para], gaps: Sequence[Sequence[_Noise]]) -> tuple[str, tuple[str, ...]]:
    if rng.random() < FAULT_RATES["heavy_rewrite"]:
        return _heavy_rewrite(rng, title, [p.text for p in paras]), ("heavy_rewrite",)
    draft = _ExpertDraft(rng, paras, gaps)
    faults = tuple(name for name, apply in _EDIT_FAULTS.items() if rng.random() < FAULT_RATES[name] and apply(draft))
    return draft.render(title), faults


# --------------------------------------------------------------------------- public API

_CORPUS_STRIDE = 2**32  # corpus `seed` uses doc seeds seed * 2**32 + i: corpus 0 is generate_doc(0..n-1)


def _check_int(name: str, value: object, low: int, high: float = math.inf) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def generate_doc(seed: int, target_chars: int = 3000) -> SynthDoc:
    """One page of about `target_chars` raw chars (within ±30% from 1 kB to 1 MB), fully determined by `seed`.

    `seed` must be >= 0 (random.Random folds negative seeds onto positive ones).
    """
    _check_int("seed", seed, 0)
    _check_int("target_chars", target_chars, 1)
    rng = Random(seed)
    src = rng.choice(SOURCES)
    topic = TOPICS[rng.choice(src.topics)]
    f = _Filler(rng, topic, src.brand)
    style = _draw_style(f, src)
    title = f.pick(topic.headlines)
    paras = _body(f, style.wrap, target_chars * (1 - rng.uniform(*src.noise_ratio)) - len(title))
    gaps: list[list[_Noise]] = [[] for _ in range(len(paras) + 2)]
    content = len(title) + sum(len(p.text) + 2 for p in paras)
    kinds = _add_noise(f, style, paras, gaps, target_chars - content, slack=0.05 * target_chars + 10)
    expert, faults = _expert(rng, title, paras, gaps)
    return SynthDoc(
        doc_id=f"synth-{seed:08d}",
        source=src.name,
        raw=_assemble(title, [p.spliced(p.inserts) for p in paras], gaps, lambda item: item.lines),
        expert=expert,
        clean=_assemble(title, [p.text for p in paras], gaps, lambda item: ()),
        faults=faults,
        topic=topic.name,
        noise_kinds=tuple(k for k in NOISE_KINDS if k in kinds),
    )


def generate_corpus(n: int, seed: int = 0, target_chars: int | tuple[int, int] = (800, 6000)) -> Iterator[SynthDoc]:
    """`n` documents; sizes fixed or log-uniform in [lo, hi]. Corpus(n) is a prefix of corpus(n + m)."""
    _check_int("n", n, 0, _CORPUS_STRIDE)
    _check_int("seed", seed, 0)
    if isinstance(target_chars, tuple) and len(target_chars) == 2:
        lo = _check_int("target_chars[0]", target_chars[0], 1)
        hi = _check_int("target_chars[1]", target_chars[1], lo)
    else:
        lo = hi = _check_int("target_chars", target_chars, 1)
    return _corpus(n, seed, lo, hi)


def _corpus(n: int, seed: int, lo: int, hi: int) -> Iterator[SynthDoc]:
    sizes = Random(f"synth-corpus-sizes-{seed}")  # str seeds hash with SHA-512: stable across runs
    for i in range(n):
        target = min(hi, max(lo, round(math.exp(sizes.uniform(math.log(lo), math.log(hi))))))
        yield generate_doc(seed * _CORPUS_STRIDE + i, target)
