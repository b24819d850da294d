-- The points' columns compressed with LZ4 instead of ZSTD(1): every poll's insert compresses its columns before the
-- sink commits, and every background merge decompresses and compresses them again. Measured at 600k points/s
-- offered (bench/results/points-lz4.json): e2e p99 lower, about 7 % more bytes per point. New parts only; the
-- parts already stored keep ZSTD until they are merged.
ALTER TABLE {db}.metric_points MODIFY COLUMN step Int64         CODEC(Delta, LZ4),
    MODIFY COLUMN ts     DateTime64(3) CODEC(Delta, LZ4),
    MODIFY COLUMN value  Float64       CODEC(Gorilla, LZ4),
    MODIFY COLUMN batch  UInt64        CODEC(LZ4),
    MODIFY COLUMN idx    UInt32        CODEC(Delta, LZ4),
    MODIFY COLUMN stored DateTime64(3) DEFAULT now64(3) CODEC(Delta, LZ4);
