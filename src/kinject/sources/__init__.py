"""Where knowledge comes from beyond local files: Wikipedia through the MediaWiki API
(:mod:`kinject.sources.wikipedia`), Wikipedia dumps and WikiExtractor output
(:mod:`kinject.sources.wikidump`), and the wikitext cleaning they share
(:mod:`kinject.sources.wikitext`)."""
