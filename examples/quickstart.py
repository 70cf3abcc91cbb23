print('perfkit quickstart: coming with the caching capability')
