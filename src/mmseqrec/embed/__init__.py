"""mmseqrec.embed"""
