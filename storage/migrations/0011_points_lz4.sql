-- The points' columns compressed with LZ4 instead of ZSTD(1): every background merge decompresses and compresses
-- them again, and merges are the largest part of the sink's CPU. Measured (bench/results/points-lz4.json): a merge
-- 276-333 instead of 305-384 ns per point, about 5 % more bytes per point stored. A codec change is metadata: the
-- parts already stored keep ZSTD until they are merged.
ALTER TABLE {db}.metric_points MODIFY COLUMN step   Int64         CODEC(Delta, LZ4),
    MODIFY COLUMN ts     DateTime64(3) CODEC(Delta, LZ4),
    MODIFY COLUMN value  Float64       CODEC(Gorilla, LZ4),
    MODIFY COLUMN batch  UInt64        CODEC(LZ4),
    MODIFY COLUMN idx    UInt32        CODEC(Delta, LZ4),
    MODIFY COLUMN stored DateTime64(3) DEFAULT now64(3) CODEC(Delta, LZ4);
