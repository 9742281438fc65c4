"""mmseqrec.enrich"""
