"""File formats: FASTA, intervals (BED/regions), VCF, tracks (BigWig/bedGraph), tables (Parquet). No model code."""
