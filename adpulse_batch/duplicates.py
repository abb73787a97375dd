"""The `duplicate` flag: the same ad as another product's in the same run.

Two passes over a run: `add` every row's ad, product and description, then ask
`is_duplicate(row)`. A row's ad is a duplicate when another row of the run has the same ad
and is another product: a different product name *and* a different description. Rows that
share either are variants of one product (sizes, colours, the same row twice), and the same
ad for them is expected. An empty description (or name) is no evidence of sameness: two
products without descriptions but with different names are different products. Texts are
compared case-insensitively and otherwise exactly: pass product and description as the
prompt has them (`prompts.field_text`, whitespace collapsed) and the ad as written.

Memory: texts are kept as 64-bit hashes (Python's `hash`, so both passes must run in one
process), 32 bytes a row while adding, about 60 more for a moment when the first answer is
asked for, and 1 byte a row after (a million rows: 32 MB, then 1 MB).
"""

from __future__ import annotations

from array import array


class DuplicateAds:
    """Which rows of a run have an ad another product has too.

    >>> ads = DuplicateAds()
    >>> ads.add(0, "Shop now!", "Mug", "Red mug")
    >>> ads.add(1, "Shop now!", "Mug", "Blue mug")  # a variant of row 0: alone, no duplicate
    >>> ads.add(2, "A plate for every day.", "Plate", "Dinner plate")
    >>> ads.add(3, "SHOP NOW!", "Bowl", "Soup bowl")  # another product
    >>> [ads.is_duplicate(row) for row in range(4)]
    [True, True, False, True]
    """

    def __init__(self):
        self._rows = array("q")
        self._ads = array("q")
        self._products = array("q")
        self._descriptions = array("q")
        self._answers: bytearray | None = None

    def add(self, row: int, ad: str, product: str, description: str) -> None:
        """Register a row's ad (a row with several ads: add each). Empty ads are never duplicates."""
        if self._answers is not None:
            raise RuntimeError("DuplicateAds: every row must be added before the first is_duplicate")
        ad_key, product_key, description_key = _key(ad), _key(product), _key(description)
        if ad_key == 0 or (product_key == 0 and description_key == 0):
            return
        self._rows.append(row)
        self._ads.append(ad_key)
        self._products.append(product_key)
        self._descriptions.append(description_key)

    def is_duplicate(self, row: int) -> bool:
        """Whether `row`'s ad is also the ad of another product of the run."""
        if self._answers is None:
            self._answers = self._solve()
            self._rows = self._ads = self._products = self._descriptions = array("q")
        return row < len(self._answers) and bool(self._answers[row])

    def _solve(self) -> bytearray:
        import numpy as np

        if not self._rows:
            return bytearray()
        rows = np.frombuffer(self._rows, dtype=np.int64)
        ads = np.frombuffer(self._ads, dtype=np.int64).view(np.uint64)
        # Only rows whose ad another row has can be duplicates: usually few, so the rest is small.
        _, inverse, counts = np.unique(ads, return_inverse=True, return_counts=True)
        shared = counts[inverse] > 1
        rows, ads = rows[shared], ads[shared]
        products = np.frombuffer(self._products, dtype=np.int64).view(np.uint64)[shared]
        descriptions = np.frombuffer(self._descriptions, dtype=np.int64).view(np.uint64)[shared]
        has_product, has_description = products != 0, descriptions != 0

        def group_sizes(*keys):
            combined = keys[0]
            for key in keys[1:]:
                combined = combined * np.uint64(0x9E3779B97F4A7C15) ^ key  # wraps: a hash of the tuple
            _, inverse, counts = np.unique(combined, return_inverse=True, return_counts=True)
            return counts[inverse]

        # Rows with the same ad that share neither product nor description with this row, by
        # inclusion-exclusion over rows (the row itself cancels out): more than 0 is a duplicate.
        others = group_sizes(ads)
        others -= np.where(has_product, group_sizes(ads, products), 0)
        others -= np.where(has_description, group_sizes(ads, descriptions), 0)
        others += np.where(has_product & has_description, group_sizes(ads, products, descriptions), 0)
        answers = np.zeros(int(np.frombuffer(self._rows, dtype=np.int64).max()) + 1, dtype=np.uint8)
        answers[rows[others > 0]] = 1
        return bytearray(answers.tobytes())


def _key(text: str) -> int:
    """A 64-bit hash of text as compared (case-folded); 0 for empty text."""
    return hash(text.casefold()) if text else 0
