"""A site with one built segment, written straight to the app database (for report and export tests)."""

from sqlalchemy.orm import Session

from icp_pipeline.db.models import Segment, SegmentResult, Site


def add_built_segment(session: Session, *, name: str, fit_score: float) -> Segment:
    """Site `shop` with segment `shop|evil` named `name`, whose ICP build succeeded with `fit_score`."""
    session.add(Site(id="shop", name="Shop", url="https://shop.example", description="d", config_sha256="0"))
    session.flush()
    segment = Segment(
        site_id="shop", key="evil", partition_key="shop|evil", name=name, description="d", source="generated"
    )
    session.add(segment)
    session.flush()
    session.add(
        SegmentResult(
            segment_id=segment.id,
            success=True,
            analysis={"fit_score": fit_score},
            provider="offline",
            model="m",
        )
    )
    return segment
