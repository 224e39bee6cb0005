"""The sandbox registry's synthetic population: numbers, tenures, holders and bindings, built from a seed.

Deterministic for a seed (no set or dict-order randomness, no clock): tests and demos rely on it.
Every person in it is invented; ID numbers are checksum-valid but belong to nobody on purpose.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from integrations.sandbox_registry.platforms import PLATFORMS, PLATFORMS_BY_ID

# Bump whenever the generator or schema changes so existing sandbox files are rebuilt.
POPULATION_VERSION = "1"
# Every date in the population is on or before this day, so results don't drift with the calendar.
REFERENCE_DATE = date(2026, 11, 1)
POPULATION_SIZE = 12_000
DEMO_PHONE = "13800138000"
FROZEN_DAYS = 90
# 携号转网 went nationwide on this day; the network also requires 120 days in service before porting.
PORTING_START = date(2019, 11, 27)
PORTING_MIN_DAYS = 120
# From the carriers' 二次号码焕新 campaign on, most old bindings are cleaned before a number is reissued.
CLEANUP_START = date(2025, 6, 1)

CARRIERS = ("china_mobile", "china_unicom", "china_telecom", "china_broadnet")
_BIG_THREE = ("china_mobile", "china_unicom", "china_telecom")


@dataclass(frozen=True)
class Prefix:
    digits: str
    carrier: str
    # When the range opened (approximate); it bounds how many times a number can have changed hands.
    opened: date
    virtual: bool = False


def _prefixes() -> tuple[Prefix, ...]:
    table: list[tuple[str, str, str]] = [
        # China Mobile
        ("134", "china_mobile", "2000-01"), ("135", "china_mobile", "1996-01"), ("136", "china_mobile", "1996-01"),
        ("137", "china_mobile", "1996-01"), ("138", "china_mobile", "1995-01"), ("139", "china_mobile", "1995-01"),
        ("147", "china_mobile", "2007-06"), ("150", "china_mobile", "2007-01"), ("151", "china_mobile", "2008-01"),
        ("152", "china_mobile", "2008-06"), ("157", "china_mobile", "2009-01"), ("158", "china_mobile", "2006-01"),
        ("159", "china_mobile", "2005-06"), ("172", "china_mobile", "2019-06"), ("178", "china_mobile", "2014-06"),
        ("182", "china_mobile", "2010-01"), ("183", "china_mobile", "2010-06"), ("184", "china_mobile", "2011-01"),
        ("187", "china_mobile", "2009-06"), ("188", "china_mobile", "2008-06"), ("195", "china_mobile", "2020-06"),
        ("197", "china_mobile", "2021-06"), ("198", "china_mobile", "2017-09"),
        # China Unicom
        ("130", "china_unicom", "1995-07"), ("131", "china_unicom", "1999-01"), ("132", "china_unicom", "2001-01"),
        ("145", "china_unicom", "2012-01"), ("155", "china_unicom", "2007-06"), ("156", "china_unicom", "2008-01"),
        ("166", "china_unicom", "2017-09"), ("175", "china_unicom", "2014-06"), ("176", "china_unicom", "2014-06"),
        ("185", "china_unicom", "2009-06"), ("186", "china_unicom", "2009-06"), ("196", "china_unicom", "2021-06"),
        # China Telecom (149 is left out: it is a data-only/IoT range, not valid as a CN mobile number)
        ("133", "china_telecom", "2002-01"), ("153", "china_telecom", "2008-10"), ("173", "china_telecom", "2014-06"),
        ("177", "china_telecom", "2014-06"), ("180", "china_telecom", "2009-06"), ("181", "china_telecom", "2010-06"),
        ("189", "china_telecom", "2008-10"), ("190", "china_telecom", "2019-12"), ("191", "china_telecom", "2019-09"),
        ("193", "china_telecom", "2019-09"), ("199", "china_telecom", "2017-09"),
        # China Broadnet
        ("192", "china_broadnet", "2022-06"),
    ]
    prefixes = [Prefix(d, c, date.fromisoformat(m + "-01")) for d, c, m in table]
    # Virtual operators (MVNOs) ride a host network; 170's host depends on the fourth digit.
    prefixes += [
        Prefix("162", "china_telecom", date(2017, 9, 1), virtual=True),
        Prefix("165", "china_mobile", date(2017, 9, 1), virtual=True),
        Prefix("167", "china_unicom", date(2017, 9, 1), virtual=True),
        Prefix("170", "", date(2014, 1, 1), virtual=True),
        Prefix("171", "china_unicom", date(2015, 6, 1), virtual=True),
    ]
    return tuple(prefixes)


PREFIXES = _prefixes()
_170_HOSTS = {"0": "china_telecom", "1": "china_telecom", "2": "china_telecom", "3": "china_mobile",
              "5": "china_mobile", "6": "china_mobile", "4": "china_unicom", "7": "china_unicom",
              "8": "china_unicom", "9": "china_unicom"}


def prefix_carrier(phone: str) -> str:
    """The carrier the prefix implies (for a ported number, the one it came from)."""
    head = phone[:3]
    if head == "170":
        return _170_HOSTS[phone[3]]
    for prefix in PREFIXES:
        if prefix.digits == head:
            return prefix.carrier
    raise KeyError("prefix not in the sandbox ranges")


# --- holders -------------------------------------------------------------------------------------

_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
    "姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
_GIVEN = (
    "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉兰萍红鹏建国建华志强文斌海燕雪梅晓东子涵浩然"
    "雨欣宇轩思远嘉怡梓萱一诺欣怡博文俊杰婷婷佳琪晨曦天佑若曦"
)
# Real county-level codes (GB/T 2260): Beijing, Shanghai, Guangzhou, Shenzhen, Hangzhou, Chengdu, Wuhan…
AREA_CODES = ("110105", "110108", "310104", "310115", "440106", "440305", "330106", "510107", "420102",
              "320106", "370102", "610113", "500103", "430104", "350203", "120101", "210102", "410105")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def id_check_char(first17: str) -> str:
    return _ID_CHECK[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def _given_names() -> tuple[str, ...]:
    singles = list(_GIVEN)
    doubles = ["秀英", "桂英", "秀兰", "建国", "建华", "志强", "海燕", "雪梅", "晓东", "子涵", "浩然", "雨欣", "宇轩",
               "思远", "嘉怡", "梓萱", "一诺", "欣怡", "博文", "俊杰", "婷婷", "佳琪", "晨曦", "天佑", "若曦", "玉兰"]
    return tuple(dict.fromkeys(singles + doubles))


_GIVEN_NAMES = _given_names()


def _holder(rng: random.Random, tenure_start: date) -> tuple[str, str]:
    name = rng.choice(_SURNAMES) + rng.choice(_GIVEN_NAMES)
    # Old enough to open the line in their own name when the tenure began, and an adult today.
    latest = min(date(tenure_start.year - 16, tenure_start.month, 1), date(REFERENCE_DATE.year - 18, 1, 1))
    earliest = date(1950, 1, 1)
    born = earliest + timedelta(days=rng.randint(0, max(0, (latest - earliest).days)))
    first17 = f"{rng.choice(AREA_CODES)}{born:%Y%m%d}{rng.randint(1, 999):03d}"
    return name, first17 + id_check_char(first17)


# --- numbers -------------------------------------------------------------------------------------


@dataclass
class NumberRecord:
    phone: str
    status: str
    carrier: str
    original_carrier: str
    virtual_operator: bool
    ported_at: date | None
    tenure_start: date | None
    previous_tenures: int
    last_released: date | None
    tagged: bool
    holder_name: str | None
    holder_id: str | None
    demo_rank: int
    bindings: list[tuple[str, date]] = field(default_factory=list)


def _previous_count(rng: random.Random, years_open: float) -> int:
    if years_open >= 20:
        weights = (25, 35, 25, 15)
    elif years_open >= 10:
        weights = (40, 35, 20, 5)
    elif years_open >= 5:
        weights = (60, 30, 10, 0)
    else:
        weights = (85, 15, 0, 0)
    return rng.choices(range(4), weights)[0]


def _tenure_length(rng: random.Random) -> int:
    return rng.randint(180, 3650)


def _gap(rng: random.Random) -> int:
    # Frozen at least 90 days, then a while in the pool before someone picks the number.
    return FROZEN_DAYS + min(900, int(rng.expovariate(1 / 120)))


def _earlier_tenures(rng: random.Random, next_start: date, count: int, opened: date) -> list[tuple[date, date]]:
    """Up to `count` finished tenures before `next_start`, newest first, never before the range opened."""
    tenures: list[tuple[date, date]] = []
    for _ in range(count):
        released = next_start - timedelta(days=_gap(rng))
        start = released - timedelta(days=_tenure_length(rng))
        if start < opened:
            start = opened
        if (released - start).days < 60:
            break
        tenures.append((start, released))
        next_start = start
    return tenures


def _history(rng: random.Random, status: str, opened: date) -> tuple[date | None, list[tuple[date, date]]]:
    """(current tenure start or None, finished tenures oldest first)."""
    years_open = (REFERENCE_DATE - opened).days / 365.25
    span = (REFERENCE_DATE - opened).days
    if status == "assigned":
        wanted = _previous_count(rng, years_open)
        longest = max(40, min(span - 30, 12 * 365))
        current_days = int(rng.triangular(20, longest, min(700, longest)))
        current = REFERENCE_DATE - timedelta(days=min(current_days, span))
        return current, list(reversed(_earlier_tenures(rng, current, wanted, opened)))
    if status == "frozen":
        released = REFERENCE_DATE - timedelta(days=rng.randint(1, FROZEN_DAYS - 1))
    elif rng.random() < 0.5:
        return None, []
    else:
        released = REFERENCE_DATE - timedelta(days=rng.randint(FROZEN_DAYS + 1, 1500))
    start = max(opened, released - timedelta(days=_tenure_length(rng)))
    last = [(start, released)]
    older = _earlier_tenures(rng, start, max(0, _previous_count(rng, years_open) - 1), opened)
    return None, list(reversed(older)) + last


def _bindings(
    rng: random.Random, finished: Sequence[tuple[date, date]], current: date | None
) -> list[tuple[str, date]]:
    """Bindings still in place, each dated inside the tenure that made it."""
    # (start, end, chance a binding outlived the tenure); the current tenure's bindings all remain.
    periods: list[tuple[date, date, float]] = []
    for index, (start, released) in enumerate(finished):
        next_start = finished[index + 1][0] if index + 1 < len(finished) else current
        periods.append((start, released, 0.15 if next_start is not None and next_start >= CLEANUP_START else 0.7))
    if current is not None:
        periods.append((current, REFERENCE_DATE, 1.0))
    held: set[str] = set()
    result: list[tuple[str, date]] = []
    for start, end, survive in periods:
        days = (end - start).days
        activity = 1.0 if days >= 365 else 0.5 + 0.5 * days / 365
        for platform in PLATFORMS:
            # An account still tied to the number blocks anyone after from registering it (此手机号已被注册).
            if platform.id in held:
                continue
            if rng.random() >= platform.popularity * 0.4 * activity:
                continue
            low = max(start, platform.since)
            high = end - timedelta(days=1)
            if low > high:
                continue
            # People sign up to most apps soon after getting a number, so dates lean early.
            bound = low + timedelta(days=int((high - low).days * rng.random() ** 2))
            if survive < 1.0 and rng.random() >= survive:
                continue
            held.add(platform.id)
            result.append((platform.id, bound))
    return result


def _demo_number() -> NumberRecord:
    """13800138000: a third-hand number with old accounts still bound, for docs and demos."""
    current = date(2021, 10, 15)
    first17 = "11010519880417012"
    previous = [
        ("qq", date(2006, 3, 2)), ("taobao", date(2009, 4, 11)), ("alipay", date(2009, 6, 20)),
        ("weibo", date(2010, 5, 8)), ("wechat", date(2012, 2, 14)), ("meituan", date(2013, 7, 3)),
        ("railway12306", date(2014, 1, 9)), ("cmb", date(2015, 9, 30)), ("douyin", date(2018, 3, 17)),
    ]
    own = [
        ("jd", date(2021, 11, 2)), ("pinduoduo", date(2021, 11, 20)), ("didi", date(2022, 1, 6)),
        ("xiaohongshu", date(2022, 5, 28)), ("dianping", date(2023, 3, 12)), ("kuaishou", date(2024, 2, 1)),
    ]
    return NumberRecord(
        phone=DEMO_PHONE, status="assigned", carrier="china_mobile", original_carrier="china_mobile",
        virtual_operator=False, ported_at=None, tenure_start=current, previous_tenures=2,
        last_released=date(2021, 6, 30), tagged=False, holder_name="王芳",
        holder_id=first17 + id_check_char(first17), demo_rank=-1, bindings=previous + own,
    )


def generate(seed: int, size: int = POPULATION_SIZE) -> list[NumberRecord]:
    rng = random.Random(seed)
    records = [_demo_number()]
    seen = {DEMO_PHONE}
    while len(records) < size:
        prefix = rng.choice(PREFIXES)
        phone = f"{prefix.digits}{rng.randrange(10**8):08d}"
        if phone in seen:
            continue
        seen.add(phone)
        records.append(_number(rng, phone, prefix))
    return records


def _number(rng: random.Random, phone: str, prefix: Prefix) -> NumberRecord:
    roll = rng.random()
    status = "frozen" if roll < 0.015 else "unassigned" if roll < 0.03 else "assigned"
    current, finished = _history(rng, status, prefix.opened)
    original = prefix_carrier(phone)
    carrier, ported_at = original, None
    # MVNO numbers cannot be ported, and porting needs the current holder's 120 days in service.
    if current is not None and not prefix.virtual and rng.random() < 0.065:
        earliest = max(current + timedelta(days=PORTING_MIN_DAYS), PORTING_START)
        if earliest < REFERENCE_DATE:
            ported_at = earliest + timedelta(days=rng.randint(0, (REFERENCE_DATE - earliest).days - 1))
            carrier = rng.choice([c for c in _BIG_THREE if c != original])
    name: str | None = None
    id_number: str | None = None
    if current is not None:
        name, id_number = _holder(rng, current)
    # Harassment labels mostly linger from an earlier holder, so reissued numbers carry more of them.
    tagged = current is not None and rng.random() < (0.07 if finished else 0.02)
    return NumberRecord(
        phone=phone,
        status=status,
        carrier=carrier,
        original_carrier=original,
        virtual_operator=prefix.virtual,
        ported_at=ported_at,
        tenure_start=current,
        previous_tenures=len(finished),
        last_released=finished[-1][1] if finished else None,
        tagged=tagged,
        holder_name=name,
        holder_id=id_number,
        demo_rank=rng.getrandbits(31),
        bindings=_bindings(rng, finished, current),
    )


# --- storage -------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS platforms (id TEXT PRIMARY KEY, unbind_supported INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS numbers (
    phone TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    carrier TEXT NOT NULL,
    original_carrier TEXT NOT NULL,
    virtual_operator INTEGER NOT NULL,
    ported_at TEXT,
    tenure_start TEXT,
    previous_tenures INTEGER NOT NULL,
    last_released TEXT,
    tagged INTEGER NOT NULL,
    holder_name TEXT,
    holder_id TEXT,
    demo_rank INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bindings (
    id INTEGER PRIMARY KEY,
    phone TEXT NOT NULL,
    platform TEXT NOT NULL,
    bound_on TEXT NOT NULL,
    unbound_at TEXT
);
CREATE INDEX IF NOT EXISTS bindings_phone ON bindings (phone);
CREATE INDEX IF NOT EXISTS numbers_demo_rank ON numbers (demo_rank, phone);
CREATE TABLE IF NOT EXISTS unbind_requests (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL,
    phone TEXT NOT NULL,
    cutoff TEXT NOT NULL,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL,
    refused TEXT NOT NULL,
    first_response TEXT NOT NULL,
    callback_url TEXT,
    callback_pending INTEGER NOT NULL DEFAULT 0,
    callback_attempts INTEGER NOT NULL DEFAULT 0,
    callback_next_at TEXT
);
CREATE INDEX IF NOT EXISTS unbind_requests_open ON unbind_requests (status)
    WHERE status IN ('submitted', 'processing');
CREATE TABLE IF NOT EXISTS unbind_items (
    request_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    platform TEXT NOT NULL,
    binding_ids TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    PRIMARY KEY (request_id, position)
);
CREATE TABLE IF NOT EXISTS tags (
    code TEXT PRIMARY KEY,
    phone TEXT NOT NULL,
    kind TEXT NOT NULL,
    since TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tag_keys (
    idempotency_key TEXT PRIMARY KEY,
    code TEXT NOT NULL REFERENCES tags(code)
);
"""
OUR_TABLES = ("meta", "platforms", "numbers", "bindings", "unbind_requests", "unbind_items", "tags", "tag_keys")


class NotASandboxDatabase(RuntimeError):
    """The file holds tables the sandbox did not create; it refuses to wipe someone else's data."""


def _iso(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


def insert_records(conn: sqlite3.Connection, records: Iterable[NumberRecord]) -> None:
    """Adds numbers with their bindings; the caller owns the transaction. Tests use it for custom cases."""
    rows = []
    binding_rows = []
    for r in records:
        rows.append((
            r.phone, r.status, r.carrier, r.original_carrier, int(r.virtual_operator), _iso(r.ported_at),
            _iso(r.tenure_start), r.previous_tenures, _iso(r.last_released), int(r.tagged), r.holder_name,
            r.holder_id, r.demo_rank,
        ))
        for platform, bound in r.bindings:
            if platform not in PLATFORMS_BY_ID:
                raise ValueError(f"unknown platform {platform!r}")
            binding_rows.append((r.phone, platform, bound.isoformat()))
    conn.executemany("INSERT INTO numbers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.executemany("INSERT INTO bindings (phone, platform, bound_on) VALUES (?,?,?)", binding_rows)


def _meta(conn: sqlite3.Connection) -> dict[str, str] | None:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return None
    if "meta" not in tables or not tables <= set(OUR_TABLES):
        raise NotASandboxDatabase("database has tables the sandbox registry did not create")
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def _create_schema(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def ensure_population(conn: sqlite3.Connection, seed: int) -> bool:
    """Builds the population unless the file already holds this version and seed. True if it built.

    A rebuild starts the file over, sandbox unbind requests and tags included.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        meta = _meta(conn)
        built = False
        if meta is None or meta.get("population_version") != POPULATION_VERSION or meta.get("seed") != str(seed):
            for table in OUR_TABLES:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            _create_schema(conn)
            insert_records(conn, generate(seed))
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [("population_version", POPULATION_VERSION), ("seed", str(seed)),
                 ("reference_date", REFERENCE_DATE.isoformat())],
            )
            built = True
        # Rewritten on every start so the flags always follow the code's catalogue.
        conn.execute("DELETE FROM platforms")
        conn.executemany("INSERT INTO platforms VALUES (?, ?)", [(p.id, int(p.unbind_supported)) for p in PLATFORMS])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return built
