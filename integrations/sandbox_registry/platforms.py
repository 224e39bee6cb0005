"""The platforms the sandbox registry knows, with how common a binding is and when binding became possible."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class PlatformSpec:
    id: str
    name_zh: str
    name_en: str
    category: str
    unbind_supported: bool
    # Rough share of phone owners with an account; drives how often the population binds it.
    popularity: float
    # Approximate month phone-number accounts became possible; no binding is dated before it.
    since: date

    def as_json(self) -> dict[str, str | bool]:
        return {
            "id": self.id,
            "name_zh": self.name_zh,
            "name_en": self.name_en,
            "category": self.category,
            "unbind_supported": self.unbind_supported,
        }


def _p(
    pid: str, zh: str, en: str, category: str, popularity: float, since: str, *, unbind: bool = False
) -> PlatformSpec:
    return PlatformSpec(pid, zh, en, category, unbind, popularity, date.fromisoformat(since + "-01"))


# unbind_supported is exactly CAICT's 一键解绑 launch set; Tencent and banks were not in it.
PLATFORMS: tuple[PlatformSpec, ...] = (
    _p("weibo", "微博", "Weibo", "social", 0.45, "2009-08", unbind=True),
    _p("taobao", "淘宝", "Taobao", "shopping", 0.85, "2003-05", unbind=True),
    _p("meituan", "美团", "Meituan", "local_services", 0.7, "2010-03", unbind=True),
    _p("dianping", "大众点评", "Dianping", "local_services", 0.3, "2003-04", unbind=True),
    _p("douyin", "抖音", "Douyin", "video", 0.7, "2016-09", unbind=True),
    _p("toutiao", "今日头条", "Toutiao", "news", 0.3, "2012-08", unbind=True),
    _p("xiaomi", "小米", "Xiaomi", "device_id", 0.15, "2011-08", unbind=True),
    _p("wechat", "微信", "WeChat", "social", 0.95, "2011-01"),
    _p("qq", "QQ", "QQ", "social", 0.6, "2005-01"),
    _p("alipay", "支付宝", "Alipay", "payment", 0.9, "2004-12"),
    _p("baidu", "百度", "Baidu", "news", 0.5, "2005-01"),
    _p("jd", "京东", "JD.com", "shopping", 0.6, "2004-01"),
    _p("kuaishou", "快手", "Kuaishou", "video", 0.4, "2012-11"),
    _p("zhihu", "知乎", "Zhihu", "social", 0.25, "2011-01"),
    _p("pinduoduo", "拼多多", "Pinduoduo", "shopping", 0.55, "2015-09"),
    _p("bilibili", "哔哩哔哩", "Bilibili", "video", 0.3, "2009-06"),
    _p("xiaohongshu", "小红书", "Xiaohongshu", "social", 0.35, "2013-06"),
    _p("netease_mail", "网易邮箱", "NetEase Mail", "mail", 0.15, "2004-01"),
    _p("baidu_netdisk", "百度网盘", "Baidu Netdisk", "cloud_drive", 0.3, "2012-03"),
    _p("ctrip", "携程", "Trip.com (Ctrip)", "travel", 0.3, "2003-12"),
    _p("railway12306", "铁路12306", "China Railway 12306", "travel", 0.5, "2011-06"),
    _p("eleme", "饿了么", "Ele.me", "local_services", 0.35, "2009-04"),
    _p("didi", "滴滴出行", "DiDi", "travel", 0.45, "2012-09"),
    _p("amap", "高德地图", "Amap", "maps", 0.35, "2010-08"),
    _p("xianyu", "闲鱼", "Xianyu", "shopping", 0.3, "2014-06"),
    _p("douban", "豆瓣", "Douban", "social", 0.1, "2005-03"),
    _p("huawei_id", "华为帐号", "Huawei ID", "device_id", 0.2, "2012-06"),
    _p("apple_id", "Apple ID", "Apple ID", "device_id", 0.2, "2013-09"),
    _p("cmb", "招商银行", "China Merchants Bank", "bank", 0.3, "2003-01"),
    _p("icbc", "中国工商银行", "ICBC", "bank", 0.35, "2003-01"),
    _p("chsi", "学信网", "CHSI", "education", 0.15, "2006-01"),
)

PLATFORMS_BY_ID: dict[str, PlatformSpec] = {p.id: p for p in PLATFORMS}
UNBIND_SUPPORTED: frozenset[str] = frozenset(p.id for p in PLATFORMS if p.unbind_supported)
