"""mmseqrec.train"""
