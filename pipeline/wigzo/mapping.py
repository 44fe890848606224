"""Where a Segment event becomes the exact requests Wigzo must receive, or the reason it must not.

This is the one file to read to know what reaches Wigzo. It is pure (no I/O, clock or randomness) and
answers with a value, never an exception: free-form properties of the wrong type are normal input, and
one odd event must never stop a partition.

Shape: a call type picks a body builder; for `track`, the event-name map turns the Segment name into a
Wigzo name, and the Wigzo name picks the `eventval` builder (`EVENTVAL_BUILDERS`), so a store can send its
own event names through Wigzo's documented payloads just by mapping them. Unknown Wigzo names carry the
Segment properties unchanged, as Segment's own Wigzo integration does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pipeline.config import Settings
from pipeline.model import Deliver, Rejection, Secret, Skip, WigzoRequest

IDENTIFY_PATH = "/rest/v1/learn/identify"
EVENT_PATH = "/rest/v1/learn/event"

DEFAULT_EVENT_NAMES: Mapping[str, str | None] = MappingProxyType({
    "Product Viewed": "product_view",
    "Product Clicked": "product_view",
    "Product Added": "addtocart",
    "Wishlist Product Added to Cart": "addtocart",
    "Product Added to Cart from Wishlist": "addtocart",
    "Product Removed": "removedfromcart",
    "Product Added to Wishlist": "wishlist",
    "Products Searched": "search",
    "Product Reviewed": "review",
    "Checkout Started": "checkout_started",
    "Order Completed": "order_completed",
})

UNSUPPORTED_CALLS = frozenset({"screen", "group", "alias"})

# Segment's mobile libraries, for events that arrive without a `channel` (which Segment normally sets).
MOBILE_LIBRARIES = frozenset({
    "analytics-ios", "analytics-android", "analytics-swift", "analytics-kotlin",
    "analytics-react-native", "analytics-flutter", "analytics-xamarin",
})

# Traits the identify body carries under Wigzo's own field names; every other trait is a user property.
MAPPED_TRAITS = frozenset({"email", "phone", "name", "firstName", "lastName", "address", "createdAt"})

# Wigzo order/checkout field -> Segment ecommerce properties, first present number wins.
TOTALS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "total_price": ("total", "revenue"),
    "total_line_items_price": ("revenue", "subtotal"),
    "total_discounts": ("discount",),
    "shipping_cost": ("shipping",),
    "total_tax": ("tax",),
})
CHECKOUT_TOTALS = ("total_price", "total_discounts", "total_tax")


@dataclass(frozen=True, slots=True)
class MappingConfig:
    org_token: Secret
    api_token: Secret
    event_names: Mapping[str, str | None] = field(default_factory=lambda: DEFAULT_EVENT_NAMES)
    """Segment event name -> Wigzo event name, or None to skip; user overrides merged over the defaults."""

    @classmethod
    def from_settings(cls, settings: Settings) -> MappingConfig:
        return cls(org_token=settings.wigzo_org_token, api_token=settings.wigzo_api_token,
                   event_names=MappingProxyType({**DEFAULT_EVENT_NAMES, **settings.event_name_map}))

    def query(self) -> tuple[tuple[str, str], ...]:
        """Wigzo's auth parameters; the API token only when one is configured."""
        api = (("token", self.api_token.reveal()),) if self.api_token else ()
        return (*api, ("org_token", self.org_token.reveal()))


class _Invalid(Exception):
    """Carries a Rejection out of a nested builder; never leaves this module."""

    def __init__(self, error_class: str, reason: str, path: str, expected: str, found: Any) -> None:
        super().__init__(reason)
        self.rejection = Rejection(stage="mapping", error_class=error_class, reason=reason, field=path,
                                   expected=expected, found=_describe(found))


def map_event(event: dict[str, Any], config: MappingConfig) -> Deliver | Skip | Rejection:
    """Decide what Wigzo receives for one validated Segment event."""
    disabled = _disabled_by_integrations(_dict(event.get("integrations")))
    if disabled:
        return Skip(disabled)
    call = _text(event.get("type"))
    if call in UNSUPPORTED_CALLS:
        return Skip(f"Wigzo does not take {call} calls")
    build = CALL_BUILDERS.get(call or "")
    if build is None:
        return Rejection(stage="mapping", error_class="UnknownCallType", reason="not a Segment call type",
                         field="type", expected="identify, track or page", found=_describe(event.get("type")))
    try:
        calls = build(event, config)
    except _Invalid as invalid:
        return invalid.rejection
    if isinstance(calls, Skip):
        return calls
    return Deliver(tuple(_request(event, config, index, path, body) for index, (path, body) in enumerate(calls)))


def _request(event: dict[str, Any], config: MappingConfig, index: int, path: str,
             body: dict[str, Any]) -> WigzoRequest:
    """Idempotency keys come from the messageId so Segment's retries and our redeliveries dedupe in Wigzo."""
    message_id = _text(event.get("messageId"))
    headers: tuple[tuple[str, str], ...] = ()
    if message_id:
        headers = (("Idempotency-Key", message_id if index == 0 else f"{message_id}:{index}"),)
    return WigzoRequest(method="POST", path=path, query=config.query(), body=body, headers=headers)


def _disabled_by_integrations(integrations: dict[str, Any]) -> str:
    """Segment's rule: an explicit Wigzo setting wins; otherwise `All: false` disables. Key case is free."""
    wigzo = [value for key, value in integrations.items() if key.lower() == "wigzo"]
    if any(value is False for value in wigzo):
        return "integrations.Wigzo is false"
    enabled = any(value is True or isinstance(value, dict) for value in wigzo)
    if not enabled and any(value is False for key, value in integrations.items() if key.lower() == "all"):
        return "integrations.All is false and Wigzo is not enabled"
    return ""


# --- call types -------------------------------------------------------------------------------------

Calls = list[tuple[str, dict[str, Any]]]


def _identify(event: dict[str, Any], config: MappingConfig) -> Calls:
    """Named traits become Wigzo's fields; all other traits (Engage audiences too) go as user properties."""
    traits = _dict(event.get("traits"))
    context_traits = _dict(_dict(event.get("context")).get("traits"))
    email = _text(traits.get("email")) or _text(context_traits.get("email"))
    phone = _identifier(traits.get("phone")) or _identifier(context_traits.get("phone"))
    if not (email or phone):
        raise _Invalid("MissingContact", "Wigzo identifies a user by email or phone and the identify has neither",
                       "traits.email", "traits.email or traits.phone", traits.get("email"))
    address = _dict(traits.get("address"))
    user_properties = {key: value for key, value in traits.items() if key not in MAPPED_TRAITS}
    fields = _present({
        "userId": _user_id(event),
        "email": email,
        "phone": phone,
        "fullName": _full_name(traits),
        "firstName": _text(traits.get("firstName")),
        "lastName": _text(traits.get("lastName")),
        "customer_id": _text(event.get("userId")),
        "postal_code": _identifier(address.get("postalCode")),
        "city": _text(address.get("city")),
        "state": _text(address.get("state")),
        "country": _text(address.get("country")),
        "createdAt": _timestamp(traits.get("createdAt")),
        "updatedAt": _timestamp(event.get("timestamp")),
        **_activity(event),
    })
    return [(IDENTIFY_PATH, {**user_properties, **fields})]


def _page(event: dict[str, Any], config: MappingConfig) -> Calls:
    """Segment's integration sends `view` with the page URL and the page's name as its title."""
    eventval = dict(_properties(event))
    eventval.update(_present({"canonicalUrl": _canonical_url(event), "title": _text(event.get("name"))}))
    return [(EVENT_PATH, _event_body(event, "view", eventval))]


def _track(event: dict[str, Any], config: MappingConfig) -> Calls | Skip:
    name = event.get("event")
    if not _text(name):
        raise _Invalid("MissingEventName", "a track call needs an event name", "event", "a name", name)
    wigzo_name = config.event_names.get(name, name)
    if wigzo_name is None:
        return Skip(f"event name map skips {name!r}")
    build_eventval = EVENTVAL_BUILDERS.get(wigzo_name, _properties)
    return [(EVENT_PATH, _event_body(event, wigzo_name, build_eventval(event)))]


CALL_BUILDERS: Mapping[str, Callable[[dict[str, Any], MappingConfig], Calls | Skip]] = MappingProxyType({
    "identify": _identify,
    "page": _page,
    "track": _track,
})


def _event_body(event: dict[str, Any], name: str, eventval: dict[str, Any]) -> dict[str, Any]:
    return {"eventName": name, "eventval": eventval, "eventCategory": "EXTERNAL", "userId": _user_id(event),
            **_activity(event)}


# --- eventval builders, by Wigzo event name ----------------------------------------------------------

def _product_view(event: dict[str, Any]) -> dict[str, Any]:
    """Product indexing: Wigzo's product fields, plus the Wigzo-only options from `integrations.Wigzo`."""
    props = _properties(event)
    options = _wigzo_options(event)
    product_id = _product_id(props, "properties")
    url = _canonical_url(event)
    if not url:
        raise _Invalid("MissingCanonicalUrl", "Wigzo indexes a product by its page URL and the event has none",
                       "properties.url", "properties.url or context.page.url", props.get("url"))
    image = _text(options.get("imageUrl")) or _text(props.get("image_url"))
    variant = _present({
        "variant_id": _identifier(props.get("variant")) or _identifier(props.get("sku")),
        "product_id": product_id,
        "title": _text(props.get("variant")),
        "sku": _identifier(props.get("sku")),
        "image": image,
        "price": _number(props.get("price")),
    })
    return _present({
        "productId": product_id,
        "canonicalUrl": url,
        "title": _text(props.get("name")),
        "description": _text(options.get("description")),
        "price": _number(props.get("price")),
        "currency": _text(props.get("currency")),
        "image": image,
        "category": _text(props.get("category")),
        "language": _text(options.get("language")),
        "vendor": _text(props.get("brand")),
        "variants": [variant] if "variant_id" in variant else None,
    })


def _product_reference(event: dict[str, Any]) -> dict[str, Any]:
    return {"productId": _product_id(_properties(event), "properties")}


def _search(event: dict[str, Any]) -> dict[str, Any]:
    query = _properties(event).get("query")
    if not _text(query):
        raise _Invalid("MissingQuery", "a Wigzo search needs the search query", "properties.query", "a string",
                       query)
    return {"query": query}


def _checkout_started(event: dict[str, Any]) -> dict[str, Any]:
    props = _properties(event)
    line_items = _line_items(props)
    totals = {name: value for name, value in _totals(props).items() if name in CHECKOUT_TOTALS}
    return _present({
        "line_items": line_items,
        "productIds": [item["product_id"] for item in line_items],
        "currency": _text(props.get("currency")),
        **totals,
        "abandoned_checkout_url": _canonical_url(event),
    })


def _order_completed(event: dict[str, Any]) -> dict[str, Any]:
    """Wigzo requires the order id, a customer id and, per line, product id, variant id and quantity."""
    props = _properties(event)
    order_id = props.get("order_id")
    if not _identifier(order_id):
        error_class = "MissingOrderId" if order_id is None else "InvalidOrderId"
        raise _Invalid(error_class, "Wigzo requires an order id", "properties.order_id", "a string or integer",
                       order_id)
    line_items = _line_items(props)
    buyer = _dict(_dict(event.get("context")).get("traits"))
    coupon = _text(props.get("coupon"))
    return _present({
        "orderId": _identifier(order_id),
        "customer_id": _user_id(event),
        **_totals(props),
        "currency": _text(props.get("currency")),
        "coupons": [coupon] if coupon else None,
        "email": _text(buyer.get("email")),
        "phone": _identifier(buyer.get("phone")),
        "fullName": _full_name(buyer),
        "line_items": line_items,
        "productIds": [item["product_id"] for item in line_items],
    })


def _properties(event: dict[str, Any]) -> dict[str, Any]:
    return _dict(event.get("properties"))


EVENTVAL_BUILDERS: Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]] = MappingProxyType({
    "product_view": _product_view,
    "addtocart": _product_reference,
    "removedfromcart": _product_reference,
    "wishlist": _product_reference,
    "search": _search,
    "review": _properties,
    "checkout_started": _checkout_started,
    "order_completed": _order_completed,
})


# --- shared pieces -----------------------------------------------------------------------------------

def _user_id(event: dict[str, Any]) -> str:
    """Anonymous visitors are still Wigzo users: their anonymousId stands in until they identify."""
    user_id = _text(event.get("userId")) or _text(event.get("anonymousId"))
    if not user_id:
        raise _Invalid("MissingUserId", "Wigzo needs a user id", "userId", "userId or anonymousId",
                       event.get("userId"))
    return user_id


def _activity(event: dict[str, Any]) -> dict[str, Any]:
    """`source`: Wigzo knows only web and app; server events come from store backends, so they count as web.
    `is_active`: Segment's `context.active`, sent only when the event states it."""
    context = _dict(event.get("context"))
    channel = event.get("channel")
    library = _text(_dict(context.get("library")).get("name"))
    mobile = channel == "mobile" if channel is not None else library in MOBILE_LIBRARIES
    active = context.get("active")
    return {"source": "app" if mobile else "web", **({"is_active": active} if isinstance(active, bool) else {})}


def _canonical_url(event: dict[str, Any]) -> str | None:
    page = _dict(_dict(event.get("context")).get("page"))
    return _text(_properties(event).get("url")) or _text(page.get("url"))


def _wigzo_options(event: dict[str, Any]) -> dict[str, Any]:
    integrations = _dict(event.get("integrations"))
    return next((value for key, value in integrations.items() if key.lower() == "wigzo" and isinstance(value, dict)),
                {})


def _product_id(product: dict[str, Any], path: str) -> str:
    """`product_id` per the ecommerce spec; `productId` is accepted as Segment's own integration does."""
    value = product.get("product_id", product.get("productId"))
    product_id = _identifier(value)
    if not product_id:
        error_class = "MissingProductId" if value is None else "InvalidProductId"
        raise _Invalid(error_class, "Wigzo requires a product id", f"{path}.product_id", "a string or integer",
                       value)
    return product_id


def _line_items(props: dict[str, Any]) -> list[dict[str, Any]]:
    products = props.get("products")
    if not isinstance(products, list) or not products:
        raise _Invalid("MissingProducts", "Wigzo needs the products of a checkout or order", "properties.products",
                       "a non-empty list", products)
    return [_line_item(product, f"properties.products[{index}]") for index, product in enumerate(products)]


def _line_item(product: Any, path: str) -> dict[str, Any]:
    """A missing quantity means one: a product listed in an order was bought at least once."""
    if not isinstance(product, dict):
        raise _Invalid("InvalidProduct", "each product must be an object", path, "an object", product)
    product_id = _product_id(product, path)
    quantity = product.get("quantity", 1)
    if isinstance(quantity, float) and quantity.is_integer():
        quantity = int(quantity)
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
        raise _Invalid("InvalidQuantity", "Wigzo requires a whole, positive quantity per line", f"{path}.quantity",
                       "a positive integer", quantity)
    category = _text(product.get("category"))
    return _present({
        "product_id": product_id,
        "variant_id": (_identifier(product.get("variant")) or _identifier(product.get("sku")) or product_id),
        "quantity": quantity,
        "price": _number(product.get("price")),
        "title": _text(product.get("name")),
        "sku": _identifier(product.get("sku")),
        "vendor": _text(product.get("brand")),
        "categories": [category] if category else None,
        "image": _text(product.get("image_url")),
    })


def _totals(props: dict[str, Any]) -> dict[str, int | float]:
    totals = {}
    for name, sources in TOTALS.items():
        value = next((number for key in sources if (number := _number(props.get(key))) is not None), None)
        if value is not None:
            totals[name] = value
    return totals


def _full_name(traits: dict[str, Any]) -> str | None:
    joined = " ".join(part for part in (_text(traits.get("firstName")), _text(traits.get("lastName"))) if part)
    return _text(traits.get("name")) or joined or None


# --- value coercion: wrong-typed optional values are left out rather than sent for Wigzo to refuse -------

def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _identifier(value: Any) -> str | None:
    """Ids and phone numbers: stores send them as strings or as whole numbers."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _text(value)


def _number(value: Any) -> int | float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _timestamp(value: Any) -> str | int | float | None:
    return _text(value) or _number(value)


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def _describe(value: Any) -> str:
    """Short and payload-free: dead-letter headers must not echo arbitrary user data at length."""
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else repr(value[:40])
    return type(value).__name__
